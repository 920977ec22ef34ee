"""Zero-shot image classification: each image against one text prompt per class name, by ITC
similarity (CLIP-style). Needs a source with a ``label`` class feature (synthetic scenes: the
largest shape; Fashion-MNIST: the garment).

Settings (``config.evaluate.zero_shot_classification``): ``source``, ``split``, ``max_images``,
``prompt`` (a format string for the class name, e.g. 'a picture of a {}').
Metrics (percent): ``top1``, ``majority_class`` (always answering the commonest class);
``num_images``, ``num_classes``; ``nonfinite`` instead of ``top1`` when the similarities hold
NaN or inf.
"""

from __future__ import annotations

import numpy as np

from xfm_jax import evaluators, streams
from xfm_jax.evaluators import batching, data, metrics


def evaluate(ctx: batching.EvalContext, settings) -> dict[str, float]:
    ds = data.load(ctx.config, settings.source, settings.split, settings.max_images)
    if ds.labels is None:
        raise evaluators.SourceLacks(f'zero_shot_classification: source {settings.source!r} has no class '
                         "labels ('label' feature); set config.evaluate."
                         'zero_shot_classification.source.')
    tokenizer = data.Tokenizer(ctx.config.data.vocab, streams.text_length(ctx.config))
    prompts = tokenizer([settings.prompt.format(name.replace('_', ' '))
                         for name in ds.label_names])
    image_embedding, _ = ctx.map(batching.image_encoder(ctx.model), ds.num_images,
                                 batching.take({'image': ds.images}), 'classification: images')
    text_embedding, _ = ctx.map(batching.text_encoder(ctx.model), len(prompts),
                                batching.take({'ids': prompts, 'mask': tokenizer.mask(prompts)}),
                                'classification: prompts')
    logits = image_embedding.astype(np.float32) @ text_embedding.astype(np.float32).T
    broken = metrics.nonfinite('zero_shot_classification', similarity=logits)
    if broken:
        return {**broken, 'num_images': float(ds.num_images)}
    return {'top1': metrics.top1_accuracy(logits, ds.labels),
            'majority_class': 100.0 * float(np.max(np.bincount(ds.labels)) / len(ds.labels)),
            'num_images': float(ds.num_images), 'num_classes': float(len(ds.label_names))}
