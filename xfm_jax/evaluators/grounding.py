"""Visual grounding with the box head (SPEC §10, RefCOCO+-style): the fusion encoder reads the
WHOLE image and one region phrase; the box head's (cx, cy, w, h) counts as right when its IoU
with the phrase's box reaches the threshold.

Settings (``config.evaluate.grounding``): ``source`` (needs boxed phrases), ``split``,
``max_images``, ``iou_threshold`` (0.5 as the papers), ``gallery_phrases`` (phrases drawn
into ``grounding_gallery_step{step}.png`` in the workdir; 0: none).
Metrics: ``accuracy`` (percent), ``mean_iou``, ``num_phrases``, and ``whole_image_baseline``:
the accuracy of always answering the whole image (0.5, 0.5, 1, 1).
"""

from __future__ import annotations

import os
import textwrap

import numpy as np

from xfm_jax.evaluators import batching, data, metrics
from xfm_jax.evaluators.retrieval import display_pixels, spread

GALLERY_COLUMNS = 4
GALLERY_PAD = 4
GALLERY_TEXT_HEIGHT = 40  # under each image: two lines of phrase and one of IoU


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
    iou = metrics.box_iou(boxes, ds.phrase_boxes)
    if settings.gallery_phrases and ctx.workdir:
        shown = spread(len(ds.phrases), settings.gallery_phrases)
        draw_gallery(os.path.join(ctx.workdir, f'grounding_gallery_step{ctx.step}.png'),
                     ds.images[ds.phrase_image[shown]], [ds.phrases[i] for i in shown],
                     ds.phrase_boxes[shown], boxes[shown], settings.iou_threshold)
    whole = np.broadcast_to(np.array([0.5, 0.5, 1.0, 1.0]), ds.phrase_boxes.shape)
    return {
        'accuracy': metrics.iou_accuracy(boxes, ds.phrase_boxes, settings.iou_threshold),
        'mean_iou': float(np.mean(iou)),
        'whole_image_baseline': metrics.iou_accuracy(whole, ds.phrase_boxes,
                                                     settings.iou_threshold),
        'num_phrases': float(len(ds.phrase_ids)),
    }


def draw_gallery(path: str, images: np.ndarray, phrases: list[str], true_boxes: np.ndarray,
                 predicted_boxes: np.ndarray, threshold: float, cell: int = 128) -> None:
    """PNG grid, ``GALLERY_COLUMNS`` wide, one cell per phrase: its image scaled to ``cell``
    pixels with the true box in green and the predicted one in red, and under it the phrase and
    the IoU (green when it reaches ``threshold``). Cells are ``cell + GALLERY_PAD`` wide and
    ``cell + GALLERY_TEXT_HEIGHT + GALLERY_PAD`` high.

    Args:
      images: CLIP-normalised [R, S, S, 3], the image of each phrase.
      true_boxes, predicted_boxes: [R, 4] normalised (cx, cy, w, h).
    """
    from PIL import Image, ImageDraw
    pixels = display_pixels(images)
    iou = metrics.box_iou(predicted_boxes, true_boxes)
    columns = min(GALLERY_COLUMNS, len(phrases))
    rows = -(-len(phrases) // columns)
    width, height = cell + GALLERY_PAD, cell + GALLERY_TEXT_HEIGHT + GALLERY_PAD
    canvas = Image.new('RGB', (columns * width, rows * height), 'white')
    pen = ImageDraw.Draw(canvas)
    for i, phrase in enumerate(phrases):
        x, y = (i % columns) * width, (i // columns) * height
        canvas.paste(Image.fromarray(pixels[i]).resize((cell, cell), Image.BICUBIC), (x, y))
        for box, colour in ((true_boxes[i], 'green'), (predicted_boxes[i], 'red')):
            cx, cy, w, h = np.clip(np.asarray(box, np.float64), 0, 1) * cell
            pen.rectangle([x + cx - w / 2, y + cy - h / 2, x + cx + w / 2, y + cy + h / 2],
                          outline=colour, width=2)
        lines = textwrap.wrap(phrase, 21)[:2]
        pen.multiline_text((x, y + cell + 2), '\n'.join(lines), fill='black')
        pen.text((x, y + cell + 28), f'IoU {iou[i]:.2f}',
                 fill='green' if iou[i] >= threshold else 'red')
    canvas.save(path)
