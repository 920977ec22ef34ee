"""Per-example random processing of raw stream records (tasks.py) into the batch contract
(xfm_jax/streams/), in two stages:

1. ``tf_augment(stream, config, pad_id)``: a tf.data map (parallel, C++): decode, crops, flip,
   RandAugment, rounding to uint8 pixels (the vision encoder normalises them on the device),
   region crop and box selection, video frame sampling. Seeded by
   a stateless seed [2] = (stream seed, example index).
2. the stream's ``*_finalize(record, rng, config, specials)``: numpy, per example: MLM masking, MIM
   masks, patch masks and normalised boxes. Seeded by a ``np.random.Generator`` from the same
   (stream seed, example index).

Each stream's record (``xfm_jax/streams/<name>.py``) names its two functions here
(``augment``: ``fn(ex, seed, config, pad_id) -> dict``; ``finalize``: ``fn(ex, rng, config,
specials) -> dict``) and the ``passthrough`` fields the first already gives in final form.

Both depend only on the example's index, never on batching, so a resumed run reproduces the
uninterrupted run exactly.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from xfm_jax import streams as streams_lib
from xfm_jax.data import image_ops, masking
from xfm_jax.data.vocab import SpecialIds


def _augment_image(encoded, seed, config):
    image = image_ops.random_resized_crop(encoded, config.image_size, image_ops.fold(seed, 0),
                                          scale=tuple(config.crop_scale))
    image, _ = image_ops.random_flip(image, image_ops.fold(seed, 1))
    ra = config.randaugment
    image = image_ops.randaugment(image, image_ops.fold(seed, 2), ra.num_ops, ra.magnitude,
                                  tuple(ra.ops))
    return image_ops.to_uint8(image)


def region_augment(ex, seed, config, pad_id):
    """Crop around a random anchor box, flip, colour-only RandAugment, choose up to K texts.

    Output: image [S, S, 3]; region_ids int32 [K, L]; box_pixels float32 [K, 4] (x, y, w, h
    in output pixels; whole image for captions and padding); box_valid, text_valid float32 [K].
    """
    size, k = config.image_size, config.streams.region.region_texts
    image = image_ops.decode_rgb(ex['image'])
    shape = tf.shape(image)
    boxes, phrases, captions = ex['boxes'], ex['phrase_ids'], ex['caption_ids']
    num_boxes = tf.shape(boxes)[0]
    anchor = tf.random.stateless_uniform([], image_ops.fold(seed, 0), 0, num_boxes, tf.int32)
    crop = image_ops.crop_around_box(shape[0], shape[1], boxes[anchor], image_ops.fold(seed, 1))
    x0, y0, x1, y1 = tf.unstack(tf.cast(crop, tf.int32))
    image = image_ops.resize(image[y0:y1, x0:x1], size)
    image, flipped = image_ops.random_flip(image, image_ops.fold(seed, 2))
    ra = config.randaugment
    image = image_ops.randaugment(image, image_ops.fold(seed, 3), ra.num_ops, ra.magnitude,
                                  tuple(ra.region_ops))
    out_boxes, keep = image_ops.crop_boxes(boxes, crop, size, flipped)
    is_anchor = tf.range(num_boxes) == anchor
    keep = keep | is_anchor  # the crop contains the anchor (it may lack area only if degenerate)
    # Anchor first, then the other surviving boxes in random order.
    scores = tf.random.stateless_uniform([num_boxes], image_ops.fold(seed, 4))
    scores = tf.where(is_anchor, -1.0, tf.where(keep, scores, 2.0))
    order = tf.argsort(scores)[:tf.reduce_sum(tf.cast(keep, tf.int32))]
    # With probability streams.region.caption_rate a whole-image caption (if any) takes the
    # first slot.
    num_captions = tf.shape(captions)[0]
    u = tf.random.stateless_uniform([2], image_ops.fold(seed, 5))
    rate = float(config.streams.region.caption_rate)
    use_caption = tf.cast((num_captions > 0) & (u[0] < rate), tf.int32)
    pick = tf.cast(u[1] * tf.cast(tf.maximum(num_captions, 1), tf.float32), tf.int32)
    caption_rows = captions[pick:pick + use_caption]
    full = tf.constant([[0.0, 0.0, size, size]])
    rows = tf.concat([caption_rows, tf.gather(phrases, order)], 0)[:k]
    row_boxes = tf.concat([tf.tile(full, [use_caption, 1]), tf.gather(out_boxes, order)], 0)[:k]
    box_valid = tf.concat([tf.zeros([use_caption]), tf.ones([tf.size(order)])], 0)[:k]
    missing = k - tf.shape(rows)[0]
    text_len = config.streams.region.text_len
    return {
        'image': image_ops.to_uint8(image),
        'image_id': ex['image_id'],
        'region_ids': tf.concat([rows, tf.fill([missing, text_len], pad_id)], 0),
        'box_pixels': tf.concat([row_boxes, tf.tile(full, [missing, 1])], 0),
        'box_valid': tf.pad(box_valid, [[0, missing]]),
        'text_valid': tf.cast(tf.range(k) < k - missing, tf.float32),
    }


def video_augment(ex, seed, config, pad_id):
    """F frames, one per equal segment of the clip (random within it), all augmented alike."""
    del pad_id
    frames = ex['frames']
    num = config.streams.video.frames
    total = tf.shape(frames)[0]
    u = tf.random.stateless_uniform([num], image_ops.fold(seed, 0))
    index = tf.cast((tf.range(num, dtype=tf.float32) + u) * tf.cast(total, tf.float32) / num,
                    tf.int32)
    frame_seed = image_ops.fold(seed, 1)  # the same seed: same crop, flip and ops on every frame
    augmented = tf.map_fn(lambda f: _augment_image(f, frame_seed, config),
                          tf.gather(frames, tf.minimum(index, total - 1)),
                          fn_output_signature=tf.TensorSpec(
                              [config.image_size, config.image_size, 3], tf.uint8))
    return {'frames': augmented, 'video_id': ex['video_id'], 'text_ids': ex['text_ids']}


def text_augment(ex, seed, config, pad_id):
    del seed, config, pad_id
    return {'text_ids': ex['text_ids']}


def image_augment(ex, seed, config, pad_id):
    del pad_id
    return {'image': _augment_image(ex['image'], seed, config)}


def image_text_augment(ex, seed, config, pad_id):
    del pad_id
    return {'image': _augment_image(ex['image'], seed, config), 'image_id': ex['image_id'],
            'text_ids': ex['text_ids']}


def tf_augment(stream: str, config, pad_id: int):
    """Returns ``fn(index, seed, record) -> record`` for ``tf.data.Dataset.map``: the stream
    record's ``augment``, plus the pipeline's bookkeeping fields."""
    augment = streams_lib.resolve(streams_lib.get(stream).augment)

    def fn(index, seed, ex):
        out = augment(ex, seed, config, pad_id)
        return {**out, 'index': index, 'skip': ex['skip'], 'source': ex['source']}
    return fn


def text_fields(ids: np.ndarray, rng: np.random.Generator, mlm, specials: SpecialIds,
                vocab_size: int, valid: bool = True) -> dict[str, np.ndarray]:
    """The five text fields of the contract for one text [L] (``valid=False``: padding text)."""
    ids = ids.astype(np.int32)
    attention = (ids != specials.pad).astype(np.int32)
    if valid:
        masked, weights = masking.mlm_mask(ids, int(attention.sum()), rng, mask_prob=mlm.prob,
                                           max_masks=mlm.max_masks, mask_id=specials.mask,
                                           vocab_size=vocab_size)
    else:
        masked, weights = ids, np.zeros(ids.shape, np.float32)
    return {'input_ids': ids, 'attention_mask': attention, 'masked_ids': masked,
            'mlm_targets': ids, 'mlm_weights': weights}


def _mim_mask(rng, config) -> dict[str, np.ndarray]:
    return {'mim_mask': masking.block_mim_mask(
        rng, grid=config.image_size // config.patch_size, num_masked=config.mim.num_masked,
        min_block=config.mim.min_block)}


def text_finalize(ex, rng, config, specials):
    return text_fields(ex['text_ids'], rng, config.streams.text.mlm, specials,
                       config.vocab.vocab_size)


def image_finalize(ex, rng, config, specials):
    del ex, specials
    return _mim_mask(rng, config)


def image_text_finalize(ex, rng, config, specials):
    return {**_mim_mask(rng, config),
            **text_fields(ex['text_ids'], rng, config.streams.image_text.mlm, specials,
                          config.vocab.vocab_size)}


def region_finalize(ex, rng, config, specials):
    mlm = config.streams.region.mlm
    rows = [text_fields(ids, rng, mlm, specials, config.vocab.vocab_size, bool(valid))
            for ids, valid in zip(ex['region_ids'], ex['text_valid'])]
    out = {name: np.stack([r[name] for r in rows]) for name in rows[0]}
    out.update(
        patch_mask=masking.box_patch_mask(ex['box_pixels'], image_size=config.image_size,
                                          patch_size=config.patch_size),
        box=masking.box_to_cxcywh(ex['box_pixels'], config.image_size))
    return out


def video_finalize(ex, rng, config, specials):
    return text_fields(ex['text_ids'], rng, config.streams.video.mlm, specials,
                       config.vocab.vocab_size)
