"""BEiT's geometric-progression resize of relative position tables, checked against a cubic
polynomial (which a bicubic interpolating spline reproduces exactly) on an independently
computed geometric grid."""

import numpy as np
import pytest
from scipy import optimize

from xfm_jax.convert import resize_relative_position_table


def _geometric_grid(src_side: int, dst_side: int) -> np.ndarray:
    """Offsets 0, ±1, ±(1+q), ... with n = src_side // 2 terms summing to dst_side // 2."""
    n = src_side // 2
    q = optimize.brentq(lambda r: sum(r ** k for k in range(n)) - dst_side // 2, 1.0001, 2.0)
    distances = np.cumsum([q ** k for k in range(n)])
    return np.concatenate([-distances[::-1], [0.0], distances])


def _cubic(dy, dx, head):
    return 0.2 * head + 0.05 * dy - 0.03 * dx + 2e-3 * dx * dy + 1e-4 * dy ** 3 - 5e-5 * dx ** 2 * dy


@pytest.mark.parametrize('src_grid, dst_grid', [(14, 24), (14, 30), (4, 5)])
def test_resize_reproduces_a_cubic_on_the_geometric_grid(src_grid, dst_grid):
    src_side, dst_side = 2 * src_grid - 1, 2 * dst_grid - 1
    grid = _geometric_grid(src_side, dst_side)
    dy, dx = np.meshgrid(grid, grid, indexing='ij')  # table rows run over dy, then dx
    heads = 3
    table = np.stack([_cubic(dy, dx, h).reshape(-1) for h in range(heads)], axis=-1)
    extra = np.arange(3 * heads, dtype=np.float64).reshape(3, heads) + 100.0
    table = np.concatenate([table, extra]).astype(np.float32)

    resized = resize_relative_position_table(table, dst_grid)

    assert resized.shape == (dst_side ** 2 + 3, heads) and resized.dtype == np.float32
    np.testing.assert_array_equal(resized[-3:], extra.astype(np.float32))
    targets = np.arange(dst_side) - dst_side // 2
    ty, tx = np.meshgrid(targets, targets, indexing='ij')
    expected = np.stack([_cubic(ty, tx, h).reshape(-1) for h in range(heads)], axis=-1)
    np.testing.assert_allclose(resized[:-3], expected, atol=2e-4)


def test_same_size_is_unchanged_and_bad_sizes_are_refused():
    table = np.random.default_rng(0).normal(size=(732, 12)).astype(np.float32)
    np.testing.assert_array_equal(resize_relative_position_table(table, 14), table)
    with pytest.raises(ValueError, match=r'\(2g-1\)\^2 \+ 3 rows .* got 730 rows'):
        resize_relative_position_table(table[:730], 14)
