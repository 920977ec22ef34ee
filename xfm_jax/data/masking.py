"""Per-example masks and box geometry in numpy: MLM masking, BEiT block-wise MIM masks, region boxes.

Everything here is pure: the caller passes a ``np.random.Generator`` seeded from (run seed, stream,
example index), so an example's masks do not depend on batching, host count or resumption.
"""

from __future__ import annotations

import math

import numpy as np


def mlm_mask(ids: np.ndarray, length: int, rng: np.random.Generator, *, mask_prob: float,
             max_masks: int, mask_id: int, vocab_size: int, span_prob: float = 0.2,
             span_sizes: tuple[int, int] = (2, 3)) -> tuple[np.ndarray, np.ndarray]:
    """Masks one tokenised text (docs/design.md §11), following the released TextMaskingGenerator.

    n = min(max_masks, max(1, round(length * mask_prob))) positions are chosen among 1..length-1
    (position 0, the start token, never; the end token may be). Candidate start positions are
    visited in random order; with probability ``span_prob`` a span of 2-3 tokens starting there
    is masked (cut at the sequence end), else one token; if spans overshoot n, a random subset
    of n is kept. Each chosen position becomes ``mask_id`` with prob 0.8, a uniform random id in
    [0, vocab_size) with prob 0.1, and stays unchanged with prob 0.1.

    Args:
      ids: int [L] token ids; the first ``length`` are real (start ... end), the rest padding.
      length: number of real tokens (>= 2).
    Returns:
      masked_ids int32 [L] and weights float32 [L] (1.0 at the chosen positions).
    """
    ids = np.asarray(ids)
    num_masks = min(max_masks, max(1, int(round(length * mask_prob))))
    chosen: set[int] = set()
    for pos in rng.permutation(np.arange(1, length)):
        if len(chosen) >= num_masks:
            break
        if pos in chosen:
            continue
        span = rng.integers(span_sizes[0], span_sizes[1] + 1) if rng.random() < span_prob else 1
        chosen.update(range(pos, min(pos + span, length)))
    positions = np.array(sorted(chosen), dtype=np.int64)
    if len(positions) > num_masks:
        positions = np.sort(rng.choice(positions, num_masks, replace=False))
    masked = ids.astype(np.int32).copy()
    draw = rng.random(len(positions))
    random_ids = rng.integers(0, vocab_size, len(positions))
    masked[positions] = np.where(draw < 0.8, mask_id,
                                 np.where(draw < 0.9, random_ids, ids[positions]))
    weights = np.zeros(ids.shape, np.float32)
    weights[positions] = 1.0
    return masked, weights


def block_mim_mask(rng: np.random.Generator, *, grid: int, num_masked: int, min_block: int = 16,
                   min_aspect: float = 0.3, max_attempts: int = 10) -> np.ndarray:
    """BEiT's block-wise mask on a ``grid x grid`` patch grid with EXACTLY ``num_masked`` patches.

    Blocks of area uniform in [min_block, remaining] and aspect ratio log-uniform in
    [min_aspect, 1/min_aspect] are placed as in BEiT's MaskingGenerator (a block is accepted when
    it adds between 1 and `remaining` new patches). BEiT's loop can stop short of the target when
    the remainder is smaller than a block; those last patches are then taken uniformly at random
    from the unmasked ones, so the count is always exact (the objective relies on it).

    Returns: bool [grid * grid] in row-major patch order.
    """
    if not 0 < num_masked <= grid * grid:
        raise ValueError(f'mim num_masked={num_masked} must be in 1..{grid * grid} for a '
                         f'{grid}x{grid} patch grid.')
    min_block = min(min_block, num_masked)
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    mask = np.zeros((grid, grid), bool)
    count = 0
    while count < num_masked:
        remaining = num_masked - count
        added = 0
        for _ in range(max_attempts):
            # Like Python's random.uniform, allow remaining < min_block (bounds swap).
            area = rng.uniform(*sorted((min_block, remaining)))
            aspect = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if 0 < w < grid and 0 < h < grid:
                top = rng.integers(0, grid - h + 1)
                left = rng.integers(0, grid - w + 1)
                window = mask[top:top + h, left:left + w]
                new = h * w - int(window.sum())
                if 0 < new <= remaining:
                    window[:] = True
                    added = new
                    break
        if added == 0:
            break
        count += added
    if count < num_masked:
        free = np.flatnonzero(~mask.ravel())
        mask.ravel()[rng.choice(free, num_masked - count, replace=False)] = True
    return mask.ravel()


def box_patch_mask(box_xywh: np.ndarray, *, image_size: int, patch_size: int) -> np.ndarray:
    """Patches covered by pixel boxes (docs/design.md §11) on the ``image_size // patch_size`` grid.

    Columns floor(x / P) .. max(floor(x / P) + 1, ceil((x + w) / P)) (exclusive end), rows alike,
    clipped to the grid: every box covers at least one patch.

    Args:
      box_xywh: float [..., 4] boxes (x, y, w, h) in pixels of the square model input.
    Returns: bool [..., N] with N = (image_size // patch_size) ** 2, row-major.
    """
    grid = image_size // patch_size
    box = np.asarray(box_xywh, np.float64)
    x, y, w, h = np.moveaxis(box, -1, 0)
    x0 = np.clip(np.floor(x / patch_size), 0, grid - 1)
    y0 = np.clip(np.floor(y / patch_size), 0, grid - 1)
    x1 = np.clip(np.maximum(x0 + 1, np.ceil((x + w) / patch_size)), 1, grid)
    y1 = np.clip(np.maximum(y0 + 1, np.ceil((y + h) / patch_size)), 1, grid)
    cells = np.arange(grid)
    cols = (cells >= x0[..., None]) & (cells < x1[..., None])  # [..., grid]
    rows = (cells >= y0[..., None]) & (cells < y1[..., None])
    return (rows[..., :, None] & cols[..., None, :]).reshape(*box.shape[:-1], grid * grid)


def box_to_cxcywh(box_xywh: np.ndarray, image_size: int) -> np.ndarray:
    """Pixel (x, y, w, h) -> normalised (cx, cy, w, h) as float32 [..., 4]."""
    x, y, w, h = np.moveaxis(np.asarray(box_xywh, np.float64), -1, 0)
    out = np.stack([x + w / 2, y + h / 2, w, h], -1) / image_size
    return out.astype(np.float32)
