"""The shared encodings of one stream: computed once per step, read by every objective of it.

Objectives of a pair stream (image_text, region, video) see a flat "pair view" with leading
dimension ``B'``: one row per (image, text) pair. For region batches a row is one region text
(``B' = B * K``), its image side the region token and the box's patches; elsewhere ``B' = B``.
The image tokens stay one row per image (``B``): each pair row names its image
(``image_index``), so the fusion projects an image's cross-attention keys and values once for
all the texts that read it.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from xfm_jax import streams as streams_lib

# Which objectives apply to which stream (docs/design.md §7). MIM needs unmasked images with a patch
# mask, so not region crops; box regression needs boxes, so region batches only.
STREAM_OBJECTIVES = {
    'text': ('mlm',),
    'image': ('mim',),
    'image_text': ('itc', 'itm', 'imlm', 'mim'),
    'region': ('itc', 'itm', 'imlm', 'box'),
    'video': ('itc', 'itm', 'imlm'),
}

# Shared encodings each objective reads (besides the flattened batch fields, always present).
_NEEDS = {
    'mlm': frozenset(),
    'itc': frozenset({'image_embedding', 'text_embedding'}),
    'itm': frozenset({'image_tokens', 'image_mask', 'image_embedding', 'text_hidden',
                      'text_embedding'}),
    'imlm': frozenset({'image_tokens', 'image_mask'}),
    'box': frozenset({'image_tokens', 'text_hidden'}),
    'mim': frozenset({'image_tokens'}),
}


def check_objectives(stream: str, objectives: Sequence[str], model=None) -> None:
    """Raises a ValueError naming the stream and objective when one does not apply.

    ``model`` (optional) adds the check that MIM has a mask token to use (X-FM only).
    """
    if stream not in STREAM_OBJECTIVES:
        raise ValueError(f'Unknown stream {stream!r}; expected one of {sorted(STREAM_OBJECTIVES)}.')
    for name in objectives:
        if name not in _NEEDS:
            raise ValueError(f'Unknown objective {name!r} for stream {stream!r}; expected one '
                             f'of {sorted(_NEEDS)}.')
        if name not in STREAM_OBJECTIVES[stream]:
            raise ValueError(
                f'Objective {name!r} does not apply to stream {stream!r}, which takes '
                f'{STREAM_OBJECTIVES[stream]} (objectives.encode.STREAM_OBJECTIVES).')
        if name == 'mim' and model is not None and not model.vision.use_mask_token:
            raise ValueError(f'Objective mim on stream {stream!r} needs a vision mask token; '
                             'this model has model.vision.use_mask_token=False (X²-VLM has no MIM).')


def encode_stream(model, stream: str, batch: dict, *, train: bool,
                  objectives: Sequence[str] | None = None) -> dict:
    """Encodes one stream's batch for the given objectives.

    Args:
      model: a ``VisionLanguageModel`` bound to params (and a 'dropout' rng when ``train``).
      stream: one of ``xfm_jax.streams.STREAMS``.
      batch: that stream's fields (see ``xfm_jax.streams``), leading dim ``B``.
      train: dropout and drop-path on; objectives read it back as ``enc['train']``.
      objectives: names whose encodings to compute; ``None`` means every objective of the stream
        that the model supports. Only what these read is computed.
    Returns:
      ``enc`` with ``train`` and, as the stream and objectives require (``B'`` rows, see module doc):
        text streams: ``input_ids, attention_mask, masked_ids, mlm_targets, mlm_weights`` [B', L];
        pair streams: ``valid`` [B'] float (region: text_valid, else ones), ``image_id`` [B']
          int32 (region: repeated per text; video: video_id);
        ``text_hidden`` [B', L, Dt] (unmasked ids), ``text_embedding`` [B', E];
        ``image_tokens`` [B, 1+N, Dv], ONE ROW PER IMAGE (video: the frame-pooled tokens; image,
          image_text, region: the UNMASKED image, also MIM's target) and ``image_index`` [B']
          int32, the image row of each pair row (region: row // K, else row): read them through
          :func:`fusion_rows`;
        ``image_mask`` [B', 1+N] int32: each pair's keys (region: token 0 + the box's patches,
          else all);
        region only: ``region_token`` [B', Dv], which replaces token 0 of the image for its pair
          (the masked mean of the box's patches), ``box`` [B', 4] and ``box_valid`` [B'];
        ``image_embedding`` [B', E] (projection of the pair's token 0: region token or image's).
    """
    if objectives is None:
        objectives = [name for name in STREAM_OBJECTIVES.get(stream, ())
                      if name != 'mim' or model.vision.use_mask_token]
    check_objectives(stream, objectives, model)
    missing = sorted(set(streams_lib.STREAMS[stream]) - set(batch))
    if missing:
        raise ValueError(f'Stream {stream!r} batch lacks fields {missing} (xfm_jax.streams).')
    needs = frozenset().union(*(_NEEDS[name] for name in objectives))
    enc = {'train': train}

    batch_size = batch[next(iter(streams_lib.STREAMS[stream]))].shape[0]
    texts_per_image = batch['input_ids'].shape[1] if stream == 'region' else 1
    rows = batch_size * texts_per_image

    if stream != 'image':
        for name in streams_lib.TEXT_FIELDS:
            enc[name] = batch[name].reshape(rows, -1)
    if stream in ('image_text', 'region', 'video'):
        ids = batch['video_id' if stream == 'video' else 'image_id']
        enc['image_id'] = jnp.repeat(ids, texts_per_image, axis=0)
        enc['valid'] = (batch['text_valid'].reshape(rows).astype(jnp.float32)
                        if stream == 'region' else jnp.ones((rows,), jnp.float32))
    if stream == 'region':
        enc['box'] = batch['box'].reshape(rows, 4)
        enc['box_valid'] = batch['box_valid'].reshape(rows).astype(jnp.float32)

    if needs & {'text_hidden', 'text_embedding'}:
        enc['text_hidden'] = model.encode_text(enc['input_ids'], enc['attention_mask'], train=train)
    if 'text_embedding' in needs:
        enc['text_embedding'] = model.text_embedding(enc['text_hidden'])

    if needs & {'image_tokens', 'image_mask', 'image_embedding'}:
        if stream == 'video':
            tokens = model.encode_video(batch['frames'], train=train)
        else:
            tokens = model.encode_image(batch['image'], train=train)
        enc['image_tokens'] = tokens
        if stream != 'image':
            enc['image_index'] = jnp.repeat(jnp.arange(batch_size, dtype=jnp.int32),
                                            texts_per_image)
        if stream == 'region' and needs & {'image_mask', 'image_embedding'}:
            enc['region_token'], enc['image_mask'] = model.region(tokens, batch['patch_mask'])
        elif stream != 'region':
            enc['image_mask'] = jnp.ones(tokens.shape[:2], jnp.int32)
    if 'image_embedding' in needs:
        first = enc['region_token'][:, None] if stream == 'region' else enc['image_tokens']
        enc['image_embedding'] = model.image_embedding(first)
    return enc


def image_rows(image_index, num_images: int, num_groups: int):
    """[R] image rows of R fusion rows -> [G, R/G] positions inside each group of
    ``num_images / G`` images, as ``layers.take_rows`` reads them. Every row's image must lie in
    its row's group (rows and images split into G contiguous groups alike)."""
    if num_images % num_groups or image_index.shape[0] % num_groups:
        raise ValueError(f'{num_images} images and {image_index.shape[0]} fusion rows do not '
                         f'split into {num_groups} groups (itm.negative_groups or batch shards).')
    first = jnp.arange(num_groups, dtype=jnp.int32) * (num_images // num_groups)
    return (image_index.reshape(num_groups, -1) - first[:, None]).astype(jnp.int32)


def fusion_rows(enc: dict, *, whole_image: bool = False) -> dict:
    """The image side of ``model.fuse`` for the pair view's own rows: every image's tokens once
    (its keys and values projected once for all its texts), each pair's key mask and, for
    region pairs, the region token in front; ``whole_image``: all of the image's tokens for
    every pair instead (box regression). Pair rows are image-major, so each image's texts form
    a group of their own."""
    num_images = enc['image_tokens'].shape[0]
    side = dict(image_tokens=enc['image_tokens'],
                image_rows=image_rows(enc['image_index'], num_images, num_images))
    if not whole_image:
        side.update(image_mask=enc['image_mask'], first_token=enc.get('region_token'))
    return side
