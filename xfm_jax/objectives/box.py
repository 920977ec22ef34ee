"""Box prediction for region texts (docs/design.md §7.5): L1 + (1 - GIoU) on (cx, cy, w, h)."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from xfm_jax import flops
from xfm_jax.objectives.encode import fusion_rows
from xfm_jax.objectives.record import Objective, RowLosses

# Guards the divisions of degenerate (zero-area) boxes: a NaN there would reach the gradient
# even through a zero loss weight.
_EPS = 1e-9


def corners(boxes):
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x0, y0, x1, y1)."""
    centre, size = boxes[..., :2], boxes[..., 2:]
    return jnp.concatenate([centre - 0.5 * size, centre + 0.5 * size], axis=-1)


def generalized_iou(boxes_a, boxes_b):
    """Element-wise GIoU of [..., 4] (cx, cy, w, h) boxes -> [...] in [-1, 1].

    GIoU = IoU - (area(C) - union) / area(C), C the smallest box enclosing both.
    """
    a, b = corners(boxes_a), corners(boxes_b)
    area = lambda c: (c[..., 2] - c[..., 0]) * (c[..., 3] - c[..., 1])  # noqa: E731
    overlap = jnp.clip(jnp.minimum(a[..., 2:], b[..., 2:]) - jnp.maximum(a[..., :2], b[..., :2]),
                       0.0)
    intersection = overlap[..., 0] * overlap[..., 1]
    union = area(a) + area(b) - intersection
    hull = jnp.maximum(a[..., 2:], b[..., 2:]) - jnp.minimum(a[..., :2], b[..., :2])
    hull_area = hull[..., 0] * hull[..., 1]
    iou = intersection / jnp.maximum(union, _EPS)
    return iou - (hull_area - union) / jnp.maximum(hull_area, _EPS)


def box_loss(predicted, target, weights):
    """L1 (summed over the 4 coordinates) and 1 - GIoU, each averaged over weighted boxes.

    Args:
      predicted, target: [B, 4] normalised (cx, cy, w, h); weights: [B] float, 0 excludes a box
        from the sums and the count.
    Returns:
      (l1, giou_loss), fp32 scalars (0 when no box counts).
    """
    l1, giou_loss, _ = box_rows(predicted, target, weights)
    return l1, giou_loss


def box_rows(predicted, target, weights):
    """:func:`box_loss` and the ``RowLosses`` of their sum: a row is one box, L1 + (1 - GIoU),
    weighted by ``weights``."""
    predicted, target = predicted.astype(jnp.float32), target.astype(jnp.float32)
    count = jnp.maximum(weights.sum(), 1.0)
    l1_rows = jnp.abs(predicted - target).sum(axis=-1)
    giou_rows = 1.0 - generalized_iou(predicted, target)
    l1 = (l1_rows * weights).sum() / count
    giou_loss = (giou_rows * weights).sum() / count
    return l1, giou_loss, RowLosses(jnp.where(weights > 0, l1_rows + giou_rows, 0.0), weights)


def box(model, enc: dict, batch: dict, rng, settings: ml_collections.ConfigDict):
    """Fusion over (FULL image, region text) -> box head. Reads ``text_hidden``,
    ``attention_mask``, ``box``, ``box_valid`` and ``valid`` (all [B', ...]) and the images
    (``image_tokens`` [B, 1+N, Dv], ``image_index``); whole-image captions and padding texts
    (box_valid 0) are excluded."""
    loss, metrics, _ = box_with_rows(model, enc, batch, rng, settings)
    return loss, metrics


def box_with_rows(model, enc: dict, batch: dict, rng, settings: ml_collections.ConfigDict):
    """:func:`box` and its ``RowLosses``, one row per region text (``box_rows``)."""
    del batch, rng, settings  # the region pair view holds everything
    fused = model.fuse(enc['text_hidden'], enc['attention_mask'],
                       **fusion_rows(enc, whole_image=True), train=enc['train'])
    l1, giou_loss, rows = box_rows(model.box_prediction(fused), enc['box'],
                                   enc['box_valid'] * enc['valid'])
    return l1 + giou_loss, {'box_l1': l1, 'box_giou_loss': giou_loss}, rows


def box_flops(d: flops.Dims, rows: flops.Rows, settings) -> int:
    """One fusion pass over the whole images (no region token); the box head is not counted."""
    del settings
    return rows.fusion(d, own_tokens=False)


OBJECTIVE = Objective(name='box', loss=box, with_rows=box_with_rows,
                      needs=frozenset({'image_tokens', 'text_hidden'}),
                      kinds=('pairs',), fields=('box', 'box_valid'), flops=box_flops)
