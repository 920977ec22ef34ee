"""Vision-language guided masked image modelling (X-FM, docs/design.md §7.6).

The target is the same online vision encoder's output on the UNMASKED image, through
stop_gradient (no EMA teacher); the prediction is a second pass with the batch's patch mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from xfm_jax import flops
from xfm_jax.objectives.record import Objective, RowLosses


def mim_loss(predicted, target, mim_mask):
    """MSE on the masked patches plus MSE on the pooled token 0.

    Args:
      predicted, target: [B, 1+N, D] vision tokens (token 0 pooled, 1..N patches);
      mim_mask: [B, N] bool, the masked patches.
    Returns:
      (patch_loss, pooled_loss): means over the masked patches' elements and over token 0's.
    """
    patch_loss, pooled_loss, _ = mim_rows(predicted, target, mim_mask)
    return patch_loss, pooled_loss


def mim_rows(predicted, target, mim_mask):
    """:func:`mim_loss` and the ``RowLosses`` of their sum, one row per image, all weighted 1:
    B x the image's share of the masked-patch squared error sum, plus its token 0's MSE. With
    the same number of masked patches in every image (the data's masks) that is the image's own
    masked-patch MSE plus its token-0 MSE."""
    squared = jnp.square(predicted.astype(jnp.float32) - target.astype(jnp.float32))
    weights = mim_mask.astype(jnp.float32)[..., None]
    count = jnp.maximum(weights.sum() * squared.shape[-1], 1.0)
    patch_loss = (squared[:, 1:] * weights).sum() / count
    images = squared.shape[0]
    rows = (squared[:, 1:] * weights).sum(axis=(1, 2)) * images / count + squared[:, 0].mean(-1)
    return patch_loss, jnp.mean(squared[:, 0]), RowLosses(rows, jnp.ones((images,), jnp.float32))


def mim(model, enc: dict, batch: dict, rng, settings: ml_collections.ConfigDict, mim_mask=None):
    """Reads ``enc['image_tokens']`` (the unmasked pass, [B, 1+N, D]) and the batch's ``image``
    and ``mim_mask``; the masked pass is MIM's own. ``mim_mask`` [B, N] bool: a given mask in
    place of the batch's, e.g. to replay another implementation's draw exactly."""
    loss, metrics, _ = mim_with_rows(model, enc, batch, rng, settings, mim_mask)
    return loss, metrics


def mim_with_rows(model, enc: dict, batch: dict, rng, settings: ml_collections.ConfigDict,
                  mim_mask=None):
    """:func:`mim` and its ``RowLosses``, one row per image (``mim_rows``)."""
    del rng, settings  # the mask comes with the data (objectives.mim.num_masked sizes it)
    mim_mask = batch['mim_mask'] if mim_mask is None else mim_mask
    if mim_mask.shape != batch['mim_mask'].shape:
        raise ValueError(f'MIM: given mask {tuple(mim_mask.shape)} must have the shape of the '
                         f"batch's mim_mask, {tuple(batch['mim_mask'].shape)}.")
    target = jax.lax.stop_gradient(enc['image_tokens'])
    predicted = model.encode_image(batch['image'], mim_mask, train=enc['train'])
    patch_loss, pooled_loss, rows = mim_rows(predicted, target, mim_mask)
    return (patch_loss + pooled_loss,
            {'mim_patch_loss': patch_loss, 'mim_pooled_loss': pooled_loss}, rows)


def mim_flops(d: flops.Dims, rows: flops.Rows, settings) -> int:
    """The masked pass of the vision encoder (the target is the shared unmasked pass)."""
    del settings
    return rows.images * flops.vision_forward(d)


def needs_mask_token(model) -> str:
    """MIM's masked pass replaces patches with the vision tower's mask token (X-FM only)."""
    if model.vision.use_mask_token:
        return ''
    return ('a vision mask token; this model has model.vision.use_mask_token=False '
            '(X²-VLM has no MIM)')


OBJECTIVE = Objective(name='mim', loss=mim, with_rows=mim_with_rows,
                      needs=frozenset({'image_tokens'}),
                      kinds=('image', 'pairs'), fields=('image', 'mim_mask'), flops=mim_flops,
                      model_check=needs_mask_token)
