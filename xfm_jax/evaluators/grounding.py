"""Visual grounding with the box head (SPEC §10, RefCOCO+-style): the fusion encoder reads the
WHOLE image and one region phrase; the box head's (cx, cy, w, h) counts as right when its IoU
with the phrase's box reaches the threshold.

Settings (``config.evaluate.grounding``): ``source`` (needs boxed phrases), ``split``,
``max_images``, ``iou_threshold`` (0.5 as the papers).
Metrics: ``accuracy`` (percent), ``mean_iou``, ``num_phrases``, and ``whole_image_baseline``:
the accuracy of always answering the whole image (0.5, 0.5, 1, 1).
"""

from __future__ import annotations

import numpy as np

from xfm_jax.evaluators import batching, data, metrics


def evaluate(ctx: batching.EvalContext, settings) -> dict[str, float]:
    ds = data.load(ctx.config, settings.source, settings.split, settings.max_images)
    if not len(ds.phrase_ids):
        raise ValueError(f'grounding: source {settings.source!r} has no boxed phrases; set '
                         'config.evaluate.grounding.source.')
    mask = (ds.phrase_ids != ctx.config.model.text.pad_id).astype(np.int32)
    _, image_tokens = ctx.map(batching.image_encoder(ctx.model), ds.num_images,
                              batching.take({'image': ds.images}), 'grounding: images')
    _, hidden = ctx.map(batching.text_encoder(ctx.model), len(ds.phrase_ids),
                        batching.take({'ids': ds.phrase_ids, 'mask': mask}), 'grounding: phrases')
    _, boxes = ctx.map(batching.fusion_heads(ctx.model), len(ds.phrase_ids),
                       lambda i: {'text_hidden': hidden[i], 'mask': mask[i],
                                  'image_tokens': image_tokens[ds.phrase_image[i]]},
                       'grounding: boxes')
    whole = np.broadcast_to(np.array([0.5, 0.5, 1.0, 1.0]), ds.phrase_boxes.shape)
    return {
        'accuracy': metrics.iou_accuracy(boxes, ds.phrase_boxes, settings.iou_threshold),
        'mean_iou': float(np.mean(metrics.box_iou(boxes, ds.phrase_boxes))),
        'whole_image_baseline': metrics.iou_accuracy(whole, ds.phrase_boxes,
                                                     settings.iou_threshold),
        'num_phrases': float(len(ds.phrase_ids)),
    }
