"""Text masked language modelling on the language encoder's MLM head (SPEC §6.1)."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax


def masked_lm_loss(logits, targets, weights):
    """Weighted mean CE at the masked positions.

    Args:
      logits: [B, L, V]; targets: [B, L] int (read only where weights > 0);
      weights: [B, L] float, 1.0 at masked positions and 0 at padding and unmasked ones.
    Returns:
      (loss, accuracy), fp32 scalars; both 0 when nothing is masked.
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    count = jnp.maximum(weights.sum(), 1.0)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return (ce * weights).sum() / count, (correct * weights).sum() / count


def mlm(model, enc: dict, batch: dict, rng, settings: ml_collections.ConfigDict):
    """Encodes ``masked_ids`` with the language encoder; CE against ``mlm_targets`` at
    ``mlm_weights`` (all [B, L] in ``enc``)."""
    del batch, rng, settings  # reads the text fields of ``enc``; the masks come with the data
    hidden = model.encode_text(enc['masked_ids'], enc['attention_mask'], train=enc['train'])
    loss, accuracy = masked_lm_loss(model.text_mlm_logits(hidden), enc['mlm_targets'],
                                    enc['mlm_weights'])
    return loss, {'mlm_accuracy': accuracy}
