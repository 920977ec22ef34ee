"""Retrieval fine-tuning (docs/design.md §7.2, §12): ITC with image ids as soft multi-positive
targets (``objectives.itc`` with ``soft_targets``) + ITM with hard negatives
(``objectives.itm``), on (image, caption) rows; evaluated by the retrieval evaluator (ITC ranking,
top-k re-ranked by ITM) on ``config.evaluate.retrieval`` (its source and split). No new head:
the pre-training projections, temperature and ITM head are fine-tuned.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from xfm_jax import evaluators
from xfm_jax.evaluators import batching
from xfm_jax.finetuning import common
from xfm_jax.models.model import VisionLanguageModel
from xfm_jax.objectives import itc, itm


class RetrievalModel(nn.Module):
    """The whole pre-training model; ``loss`` = ITC (soft targets) + ITM."""
    model: VisionLanguageModel
    itm_negative_groups: int = 1  # hard negatives mined within each of these batch groups

    def __call__(self, batch, *, train: bool = False):
        """Touches every parameter (for ``init``)."""
        return self.model(batch['image'], batch['input_ids'], batch['attention_mask'],
                          train=train)

    def loss(self, batch, *, train: bool = True):
        model, mask = self.model, batch['attention_mask']
        image_tokens = model.encode_image(batch['image'], train=train)
        text_hidden = model.encode_text(batch['input_ids'], mask, train=train)
        ones = jnp.ones(mask.shape[:1], jnp.float32)
        # The pair view the objectives read (objectives/encode.py), one row per caption.
        enc = {'train': train, 'image_tokens': image_tokens,
               'image_index': jnp.arange(image_tokens.shape[0], dtype=jnp.int32),  # own image
               'image_mask': jnp.ones(image_tokens.shape[:2], jnp.int32),
               'text_hidden': text_hidden, 'attention_mask': mask,
               'image_embedding': model.image_embedding(image_tokens),
               'text_embedding': model.text_embedding(text_hidden),
               'image_id': batch['image_id'], 'valid': ones}
        itc_loss, itc_metrics = itc.itc(model, enc, batch, None,
                                        ml_collections.ConfigDict({'soft_targets': True}))
        itm_loss, itm_metrics = itm.itm(
            model, enc, batch, self.make_rng('sample'),
            # A caption of the same image is no negative here (the reference passes image ids).
            ml_collections.ConfigDict({'negative_groups': self.itm_negative_groups,
                                       'negatives': 'image'}))
        return itc_loss + itm_loss, {'itc_loss': itc_loss, 'itm_loss': itm_loss,
                                     **itc_metrics, **itm_metrics}


def build(config, model: VisionLanguageModel, train_set: common.Examples, *,
          batch_shards: int) -> RetrievalModel:
    """``batch_shards``: ITM mines negatives in each device's local batch (as pre-training)."""
    del config, train_set
    return RetrievalModel(model, itm_negative_groups=batch_shards)


def evaluate(run, eval_set: common.Examples, train_set: common.Examples) -> dict[str, float]:
    del eval_set, train_set  # the evaluator reads config.evaluate.retrieval's split itself
    ctx = batching.EvalContext(model=run.task_model.model, params=run.params['model'],
                               mesh=run.mesh, rules=run.rules, config=run.config,
                               batch_size=run.batch_size, workdir=run.workdir, step=run.step)
    return evaluators.get('retrieval')(ctx, run.config.evaluate.retrieval)


def read(config, split: str, max_examples: int) -> common.Examples:
    """One row per caption; ``max_examples`` counts images. Equal ``image_id`` = same image."""
    images = common.read_image_set(config, config.task.source, split, max_examples)
    return common.Examples(
        rows={'image_index': images.caption_image, 'image_id': images.caption_image,
              'input_ids': images.caption_ids,
              'attention_mask': (images.caption_ids != config.model.text.pad_id).astype('int32')},
        images=images.images)
