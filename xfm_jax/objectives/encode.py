"""The shared encodings of one stream: computed once per step, read by every objective of it.

Objectives of a pair stream (image_text, region, video) see a flat "pair view" with leading
dimension ``B'``: one row per (image, text) pair. For region batches a row is one region text
(``B' = B * K``), its image side the region token and the box's patches; elsewhere ``B' = B``.
The image tokens stay one row per image (``B``): each pair row names its image
(``image_index``), so the fusion projects an image's cross-attention keys and values once for
all the texts that read it.
"""

from __future__ import annotations

import jax.numpy as jnp

from xfm_jax import streams as streams_lib


def encode(model, stream: streams_lib.Stream, batch: dict, *, train: bool,
           needs: frozenset[str]) -> dict:
    """Encodes one stream's batch: the pair view and the shared encodings ``needs``.

    Args:
      model: a ``VisionLanguageModel`` bound to params (and a 'dropout' rng when ``train``).
      stream: the stream's record (``xfm_jax.streams.STREAMS``).
      batch: that stream's fields (see ``xfm_jax.streams``), leading dim ``B``.
      train: dropout and drop-path on; objectives read it back as ``enc['train']``.
      needs: the encodings to compute (the union of the objectives' ``needs``).
    Returns:
      ``enc`` with ``train`` and, as the stream and needs require (``B'`` rows, see module doc):
        text streams: ``input_ids, attention_mask, masked_ids, mlm_targets, mlm_weights`` [B', L];
        pair streams: ``valid`` [B'] float (``text_valid`` where the stream has it, else ones),
          ``image_id`` [B'] int32 (the stream's ``image_id`` field, repeated per text), and its
          ``pair_fields`` (region: ``box`` [B', 4], ``box_valid`` [B']);
        ``text_hidden`` [B', L, Dt] (unmasked ids), ``text_embedding`` [B', E];
        ``image_tokens`` [B, 1+N, Dv], ONE ROW PER IMAGE (``stream.encode_images``; video: the
          frame-pooled tokens; image, image_text, region: the UNMASKED image, also MIM's
          target) and, for pair streams, ``image_index`` [B'] int32, the image row of each pair
          row (region: row // K, else row): read them through :func:`fusion_rows`;
        ``image_mask`` [B', 1+N] int32: each pair's keys (``stream.pair_keys``; region: token
          0 + the box's patches, else all) and, region only, ``region_token`` [B', Dv], which
          replaces token 0 of the image for its pair (the masked mean of the box's patches);
        ``image_embedding`` [B', E] (projection of the pair's token 0: region token or image's).
    """
    missing = sorted(set(stream.fields) - set(batch))
    if missing:
        raise ValueError(f'Stream {stream.name!r} batch lacks fields {missing} (xfm_jax.streams).')
    enc = {'train': train}
    batch_size = batch[next(iter(stream.fields))].shape[0]
    pairs = stream.kind == 'pairs'

    if stream.has_text:
        for name in streams_lib.TEXT_FIELDS:
            enc[name] = batch[name].reshape(-1, batch[name].shape[-1])
    rows = enc['input_ids'].shape[0] if stream.has_text else batch_size
    texts_per_image = rows // batch_size
    if pairs:
        enc['image_id'] = jnp.repeat(batch[stream.image_id], texts_per_image, axis=0)
        enc['valid'] = (batch['text_valid'].reshape(rows).astype(jnp.float32)
                        if 'text_valid' in stream.fields else jnp.ones((rows,), jnp.float32))
        for name in stream.pair_fields:
            enc[name] = batch[name].reshape(rows, *batch[name].shape[2:])

    if needs & {'text_hidden', 'text_embedding'}:
        enc['text_hidden'] = model.encode_text(enc['input_ids'], enc['attention_mask'], train=train)
    if 'text_embedding' in needs:
        enc['text_embedding'] = model.text_embedding(enc['text_hidden'])

    if needs & {'image_tokens', 'image_mask', 'image_embedding'}:
        enc['image_tokens'] = stream.encode_images(model, batch, train=train)
        if pairs:
            enc['image_index'] = jnp.repeat(jnp.arange(batch_size, dtype=jnp.int32),
                                            texts_per_image)
    if pairs and needs & {'image_mask', 'image_embedding'}:
        enc.update(stream.pair_keys(model, enc['image_tokens'], batch))
    if 'image_embedding' in needs:
        first = enc['region_token'][:, None] if 'region_token' in enc else enc['image_tokens']
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
