"""Visual grounding by the box head (docs/design.md §12, RefCOCO+): the fusion encoder reads the
WHOLE image and one region phrase; the box head's (cx, cy, w, h) counts as right when its IoU
with the phrase's box reaches the threshold.

Settings (``config.evaluate.grounding``): ``source`` (needs boxed phrases), ``split``,
``max_images``, ``iou_threshold`` (0.5 as the papers), ``gallery_phrases`` (phrases drawn
into ``grounding_gallery_step{step}.png`` in the workdir and to TensorBoard; 0: none).
Metrics: ``accuracy`` (percent), ``mean_iou``, ``num_phrases``, and ``whole_image_baseline``:
the accuracy of always answering the whole image (0.5, 0.5, 1, 1). ``nonfinite`` (and no
accuracy) when the predicted boxes hold NaN or inf.
"""

from __future__ import annotations

import numpy as np

from xfm_jax import evaluators
from xfm_jax.evaluators import batching, data, gallery, metrics
from xfm_jax.evaluators.retrieval import spread


def evaluate(ctx: batching.EvalContext, settings) -> dict[str, float]:
    ds = data.load(ctx.config, settings.source, settings.split, settings.max_images)
    if not len(ds.phrase_ids):
        raise evaluators.SourceLacks(f'grounding: source {settings.source!r} has no boxed '
                                     'phrases; set config.evaluate.grounding.source.')
    mask = (ds.phrase_ids != ctx.config.model.text.pad_id).astype(np.int32)
    _, image_tokens = ctx.map(batching.image_encoder(ctx.model), ds.num_images,
                              batching.take({'image': ds.images}), 'grounding: images')
    _, hidden = ctx.map(batching.text_encoder(ctx.model), len(ds.phrase_ids),
                        batching.take({'ids': ds.phrase_ids, 'mask': mask}), 'grounding: phrases')
    _, boxes = ctx.map(batching.fusion_heads(ctx.model), len(ds.phrase_ids),
                       lambda i: {'text_hidden': hidden[i], 'mask': mask[i],
                                  'image_tokens': image_tokens[ds.phrase_image[i]]},
                       'grounding: boxes')
    broken = metrics.nonfinite('grounding', boxes=boxes)
    if broken:
        return {**broken, 'num_phrases': float(len(ds.phrase_ids))}
    iou = metrics.box_iou(boxes, ds.phrase_boxes)
    if settings.gallery_phrases:
        shown = spread(len(ds.phrases), settings.gallery_phrases)
        ctx.gallery('grounding_gallery',
                    gallery_rows(ds.images[ds.phrase_image[shown]], [ds.phrases[i] for i in shown],
                                 ds.phrase_boxes[shown], boxes[shown], settings.iou_threshold),
                    size=GALLERY_SIZE)
    whole = np.broadcast_to(np.array([0.5, 0.5, 1.0, 1.0]), ds.phrase_boxes.shape)
    return {
        'accuracy': metrics.iou_accuracy(boxes, ds.phrase_boxes, settings.iou_threshold),
        'mean_iou': float(np.mean(iou)),
        'whole_image_baseline': metrics.iou_accuracy(whole, ds.phrase_boxes,
                                                     settings.iou_threshold),
        'num_phrases': float(len(ds.phrase_ids)),
    }


GALLERY_SIZE = 128  # pixels per gallery row


def gallery_rows(images: np.ndarray, phrases: list[str], true_boxes: np.ndarray,
                 predicted_boxes: np.ndarray, threshold: float,
                 size: int = GALLERY_SIZE) -> list[list]:
    """Rows for ``gallery.draw``: one per phrase: its image scaled to ``size`` pixels with the
    true box in green and the predicted one in red, then the phrase and the IoU, written in
    green when the IoU reaches ``threshold``, else red.

    Args:
      images: CLIP-normalised [R, S, S, 3], the image of each phrase.
      true_boxes, predicted_boxes: [R, 4] normalised (cx, cy, w, h).
    """
    from PIL import Image, ImageDraw
    iou = metrics.box_iou(predicted_boxes, true_boxes)
    rows = []
    for pixels, phrase, true, predicted, overlap in zip(gallery.to_uint8(images), phrases,
                                                        true_boxes, predicted_boxes, iou):
        image = Image.fromarray(pixels).resize((size, size), Image.BICUBIC)
        pen = ImageDraw.Draw(image)
        for box, colour in ((true, 'green'), (predicted, 'red')):
            cx, cy, w, h = np.clip(np.asarray(box, np.float64), 0, 1) * size
            pen.rectangle([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], outline=colour,
                          width=2)
        rows.append([gallery.Thumb(np.asarray(image)),
                     gallery.Text(f'{phrase}\nIoU {overlap:.2f}',
                                  'green' if overlap >= threshold else 'red')])
    return rows
