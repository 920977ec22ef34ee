"""Image-text contrastive loss (ITC, docs/design.md §7.2) over every pair the function sees.

Under ``jit`` with the batch sharded over devices, the arrays here are the GLOBAL batch, so the
similarity matrix already spans all data shards: no explicit all-gather is written.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from xfm_jax.objectives.record import Objective, RowLosses

# Logit for excluded (invalid) columns: exp() underflows to 0 yet stays finite, so a zero
# target times its log-probability is 0, not NaN.
_EXCLUDED_LOGIT = -1e9


def similarity(image_embedding, text_embedding, temperature):
    """[B, E] x [B, E] L2-normalised embeddings -> logits [B, B] = v_i . t_j / temp (fp32).

    HIGHEST precision: accelerators' default fp32 matmul rounds to bf16, too coarse once divided
    by a temperature near 0.01; the matrix is small.
    """
    sim = jnp.einsum('ie,je->ij', image_embedding.astype(jnp.float32),
                     text_embedding.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    return sim / jnp.asarray(temperature, jnp.float32)


def _one_direction(logits, positives, valid):
    """Soft-target CE of each row over the valid columns; mean over valid rows.

    logits [B, B] (row = anchor), positives [B, B] bool, valid [B] float.
    Returns (loss, accuracy: the top column is a positive, each anchor's CE [B]).
    """
    column_ok = valid[None, :] > 0
    logits = jnp.where(column_ok, logits, _EXCLUDED_LOGIT)
    targets = (positives & column_ok).astype(jnp.float32)
    targets = targets / jnp.maximum(targets.sum(axis=-1, keepdims=True), 1.0)
    per_row = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    hit = jnp.take_along_axis(positives, jnp.argmax(logits, axis=-1)[:, None], axis=-1)[:, 0]
    count = jnp.maximum(valid.sum(), 1.0)
    return (per_row * valid).sum() / count, (hit * valid).sum() / count, per_row


def contrastive_loss(image_embedding, text_embedding, temperature, positives, valid):
    """1/2 [CE(image -> text) + CE(text -> image)] with the rows' positives as (soft) targets.

    Args:
      image_embedding, text_embedding: [B, E] L2-normalised; row i of each forms pair i.
      temperature: scalar divisor.
      positives: [B, B] bool, symmetric; [i, j] true when text j matches image i (the identity
        in pre-training; equal image ids for soft multi-positive targets).
      valid: [B] float; invalid pairs are neither anchors nor candidates.
    Returns:
      (loss, image->text accuracy), fp32 scalars.
    """
    loss, accuracy, _ = contrastive_rows(image_embedding, text_embedding, temperature, positives,
                                         valid)
    return loss, accuracy


def contrastive_rows(image_embedding, text_embedding, temperature, positives, valid):
    """:func:`contrastive_loss` and its ``RowLosses``: row i is pair i, the mean of its image's
    and its text's CE as anchors, weighted by ``valid`` (its candidates are the whole batch)."""
    logits = similarity(image_embedding, text_embedding, temperature)
    i2t_loss, i2t_accuracy, i2t_rows = _one_direction(logits, positives, valid)
    t2i_loss, _, t2i_rows = _one_direction(logits.T, positives.T, valid)
    rows = RowLosses(jnp.where(valid > 0, 0.5 * (i2t_rows + t2i_rows), 0.0), valid)
    return 0.5 * (i2t_loss + t2i_loss), i2t_accuracy, rows


def itc(model, enc: dict, batch: dict, rng, settings: ml_collections.ConfigDict):
    """ITC on the pair view ``enc`` (``image_embedding``, ``text_embedding``, ``valid``,
    ``image_id``, all [B', ...]). ``settings.soft_targets``: pairs with equal image ids are all
    positives (fine-tuning), else only the diagonal (pre-training)."""
    loss, metrics, _ = itc_with_rows(model, enc, batch, rng, settings)
    return loss, metrics


def itc_with_rows(model, enc: dict, batch: dict, rng, settings: ml_collections.ConfigDict):
    """:func:`itc` and its ``RowLosses``, one row per pair (``contrastive_rows``)."""
    del batch, rng  # everything comes from the shared encodings; ITC draws nothing
    image_id = enc['image_id']
    if settings.soft_targets:
        positives = image_id[:, None] == image_id[None, :]
    else:
        positives = jnp.eye(image_id.shape[0], dtype=bool)
    loss, accuracy, rows = contrastive_rows(enc['image_embedding'], enc['text_embedding'],
                                            model.temperature(), positives, enc['valid'])
    return loss, {'itc_accuracy': accuracy}, rows


# Its whole cost is in the shared embeddings and their similarity matrix (flops.encodings_forward).
OBJECTIVE = Objective(name='itc', loss=itc, needs=frozenset({'image_embedding', 'text_embedding'}),
                      kinds=('pairs',), flops=lambda d, rows, settings: 0,
                      with_rows=itc_with_rows)
