"""Resizing BEiT relative-position bias tables to another image resolution (docs/design.md §3).

A table of a grid g holds (2g-1)^2 patch-pair entries indexed by (dy, dx) in [-(g-1), g-1]^2,
plus three extra entries (cls->patch, patch->cls, cls->cls). BEiT does not resize it with plain
bicubic interpolation: the source offsets are placed on a geometric progression that stretches
to the target's range, so that short distances (where the table varies most) keep their values
and long ones are extrapolated smoothly. The reference fits ``scipy.interpolate.interp2d(kind=
'cubic')`` per head on that grid; that is FITPACK's interpolating (s=0) bicubic spline on a
rectangular grid, which ``RectBivariateSpline(kx=3, ky=3, s=0)`` computes as well.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import interpolate

NUM_EXTRA = 3  # cls->patch, patch->cls, cls->cls


def table_side(num_entries: int) -> int:
    """Number of table rows (2g-1)^2 + 3 -> side 2g-1; raises if it is not of that form."""
    side = math.isqrt(max(num_entries - NUM_EXTRA, 0))
    if side * side + NUM_EXTRA != num_entries or side % 2 == 0:
        raise ValueError(f'A relative position table has (2g-1)^2 + {NUM_EXTRA} rows for a g x g '
                         f'patch grid; got {num_entries} rows.')
    return side


def _geometric_offsets(src_side: int, dst_side: int) -> np.ndarray:
    """Source offsets [-(..), .., 0, .., (..)] on a geometric progression reaching dst_side // 2.

    The ratio q is found by the same bisection as the reference (q in [1.01, 1.5], 1e-6). Where
    q would exceed 1.5 (growing the grid by more than that per step) the progression falls short
    of the target range and, as in the reference's spline, the outermost offsets take edge values.
    """
    half = src_side // 2
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** half) / (1.0 - q) > dst_side // 2:
            right = q
        else:
            left = q
    distances = [1.0]
    for i in range(1, half):
        distances.append(distances[-1] + q ** i)
    return np.array([-d for d in reversed(distances)] + [0.0] + distances)


def resize_relative_position_table(table: np.ndarray, grid: int) -> np.ndarray:
    """[(2s-1)^2 + 3, H] table of an s x s grid -> [(2g-1)^2 + 3, H] for a g x g grid.

    The three extra entries are kept as they are. Same size: returned unchanged (a copy).
    """
    table = np.asarray(table)
    if table.ndim != 2:
        raise ValueError(f'Expected a relative position table [entries, heads], got {table.shape}.')
    src_side, dst_side = table_side(table.shape[0]), 2 * grid - 1
    if src_side == dst_side:
        return table.copy()
    offsets = _geometric_offsets(src_side, dst_side)
    half = dst_side // 2
    targets = np.arange(-half, half + 1, dtype=np.float64)
    patch_part = table[:-NUM_EXTRA].astype(np.float64).reshape(src_side, src_side, -1)
    heads = [
        interpolate.RectBivariateSpline(offsets, offsets, patch_part[..., h], kx=3, ky=3, s=0)(
            targets, targets).reshape(-1)
        for h in range(table.shape[1])
    ]
    resized = np.stack(heads, axis=-1).astype(table.dtype)
    return np.concatenate([resized, table[-NUM_EXTRA:]], axis=0)
