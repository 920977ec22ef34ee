"""Image-conditioned masked LM (IMLM, docs/design.md §7.4): the MASKED text is re-encoded
by the language encoder and fused with the image; the fusion MLM head predicts the masked ids."""

from __future__ import annotations

import ml_collections

from xfm_jax import flops
from xfm_jax.objectives.encode import fusion_rows
from xfm_jax.objectives.mlm import masked_lm_rows, masked_positions
from xfm_jax.objectives.record import Objective


def imlm(model, enc: dict, batch: dict, rng, settings: ml_collections.ConfigDict):
    """Reads the pair view: ``masked_ids``, ``attention_mask``, ``mlm_targets``, ``mlm_weights``
    [B', L], ``valid`` [B'] and the image side (``encode.fusion_rows``). X-FM's stop-gradient on
    the language output lives in ``model.fuse``."""
    loss, metrics, _ = imlm_with_rows(model, enc, batch, rng, settings)
    return loss, metrics


def imlm_with_rows(model, enc: dict, batch: dict, rng, settings: ml_collections.ConfigDict):
    """:func:`imlm` and its ``RowLosses``, one row per pair-view text (``masked_lm_rows``)."""
    del batch, rng  # the masks come with the data
    hidden = model.encode_text(enc['masked_ids'], enc['attention_mask'], train=enc['train'])
    fused = model.fuse(hidden, enc['attention_mask'], **fusion_rows(enc), train=enc['train'])
    weights = enc['mlm_weights'] * enc['valid'][:, None]  # padding region texts carry no loss
    fused, targets, weights = masked_positions(fused, enc['mlm_targets'], weights,
                                               settings.get('max_predictions', 0))
    loss, accuracy, rows = masked_lm_rows(model.fusion_mlm_logits(fused), targets, weights)
    return loss, {'imlm_accuracy': accuracy}, rows


def imlm_flops(d: flops.Dims, rows: flops.Rows, settings) -> int:
    """The language encoder on the masked text, one fusion pass and the fusion MLM head."""
    return rows.fusion(d) + rows.pairs * (
        flops.text_forward(d, rows.text_len)
        + flops.mlm_head_forward(d, flops.mlm_positions(settings, rows.text_len)))


OBJECTIVE = Objective(name='imlm', loss=imlm, needs=frozenset({'image_tokens', 'image_mask'}),
                      kinds=('pairs',), flops=imlm_flops, with_rows=imlm_with_rows)
