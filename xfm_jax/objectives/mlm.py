"""Text masked language modelling on the language encoder's MLM head (docs/design.md §7.1).

X²-VLM reads the head after its whole stack (fusion layers without cross-attention), X-FM after
the language encoder: ``model.encode_text_for_mlm`` says which."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax

from xfm_jax import flops
from xfm_jax.objectives.record import Objective, RowLosses, row_mean


def masked_lm_loss(logits, targets, weights):
    """Weighted mean CE at the masked positions.

    Args:
      logits: [B, L, V]; targets: [B, L] int (read only where weights > 0);
      weights: [B, L] float, 1.0 at masked positions and 0 at padding and unmasked ones.
    Returns:
      (loss, accuracy), fp32 scalars; both 0 when nothing is masked.
    """
    loss, accuracy, _ = masked_lm_rows(logits, targets, weights)
    return loss, accuracy


def masked_lm_rows(logits, targets, weights):
    """:func:`masked_lm_loss` and its ``RowLosses``: a row (text) is its masked positions' mean
    CE, weighted by their weight (the number of masked tokens)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    count = jnp.maximum(weights.sum(), 1.0)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    row_weight = weights.sum(axis=-1)
    rows = RowLosses(row_mean((ce * weights).sum(axis=-1), row_weight), row_weight)
    return (ce * weights).sum() / count, (correct * weights).sum() / count, rows


def masked_positions(hidden, targets, weights, max_predictions: int):
    """Keeps the masked positions only, so the vocabulary-wide head and softmax run on few rows.

    hidden [B, L, D], targets / weights [B, L] -> [B, P, D], [B, P], [B, P] with
    P = min(max_predictions, L); masked positions come first (in order), the rest is padding
    with weight 0. ``max_predictions`` 0 keeps all L. It must be >= the data's max masks per
    text (``data.streams.*.mlm.max_masks``): positions beyond it would be dropped.
    """
    length = weights.shape[1]
    if not max_predictions or max_predictions >= length:
        return hidden, targets, weights
    index = jnp.argsort(-(weights > 0).astype(jnp.int32), axis=1, stable=True)[:, :max_predictions]
    take = lambda x: jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), 1)  # noqa: E731
    return take(hidden), take(targets), take(weights)


def mlm(model, enc: dict, batch: dict, rng, settings: ml_collections.ConfigDict):
    """Encodes ``masked_ids`` (``model.encode_text_for_mlm``); CE against ``mlm_targets`` at
    ``mlm_weights`` (all [B, L] in ``enc``), on at most ``settings.max_predictions`` positions."""
    loss, metrics, _ = mlm_with_rows(model, enc, batch, rng, settings)
    return loss, metrics


def mlm_with_rows(model, enc: dict, batch: dict, rng, settings: ml_collections.ConfigDict):
    """:func:`mlm` and its ``RowLosses``, one row per text (``masked_lm_rows``)."""
    del batch, rng  # reads the text fields of ``enc``; the masks come with the data
    hidden = model.encode_text_for_mlm(enc['masked_ids'], enc['attention_mask'],
                                       train=enc['train'])
    hidden, targets, weights = masked_positions(hidden, enc['mlm_targets'], enc['mlm_weights'],
                                                settings.get('max_predictions', 0))
    loss, accuracy, rows = masked_lm_rows(model.text_mlm_logits(hidden), targets, weights)
    return loss, {'mlm_accuracy': accuracy}, rows


def mlm_flops(d: flops.Dims, rows: flops.Rows, settings) -> int:
    """The language encoder on the masked text and its MLM head on the predicted positions."""
    return rows.pairs * (flops.text_forward(d, rows.text_len)
                         + flops.mlm_head_forward(d, flops.mlm_positions(settings, rows.text_len)))


OBJECTIVE = Objective(name='mlm', loss=mlm, needs=frozenset(), kinds=('text',), flops=mlm_flops,
                      with_rows=mlm_with_rows)
