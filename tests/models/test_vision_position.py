"""The vision tower's optional absolute position embedding (model.vision.abs_pos_emb)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xfm_jax.models.vision import VisionConfig, VisionTransformer, sincos_position_embedding


def test_sincos_table_encodes_row_and_column():
    grid, width = 4, 16
    table = sincos_position_embedding(grid, width)
    assert table.shape == (1 + grid * grid, width) and table.dtype == np.float32
    np.testing.assert_array_equal(table[0], 0.0)  # cls carries no position
    patches = table[1:].reshape(grid, grid, width)
    rows, cols = patches[..., :width // 2], patches[..., width // 2:]
    # The first half depends on the row only, the second on the column only.
    np.testing.assert_array_equal(rows, np.broadcast_to(rows[:, :1], rows.shape))
    np.testing.assert_array_equal(cols, np.broadcast_to(cols[:1, :], cols.shape))
    assert len({patch.tobytes() for patch in table[1:]}) == grid * grid  # every patch its own
    # Position 0 of each half: sines 0, cosines 1; each (sin, cos) pair lies on the unit circle.
    np.testing.assert_allclose(patches[0, 0], np.tile(np.repeat([0.0, 1.0], width // 4), 2))
    pairs = patches.reshape(grid, grid, 2, 2, width // 4)
    np.testing.assert_allclose((pairs ** 2).sum(axis=3), 1.0, rtol=1e-6)


def _tokens(kind: str, images, params=None):
    config = VisionConfig(image_size=16, patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32,
                          drop_path_rate=0.0, abs_pos_emb=kind)
    model = VisionTransformer(config)
    params = params or nn.unbox(model.init(jax.random.key(0), images)['params'])
    return model, params


def test_sincos_makes_equal_patches_distinguishable_and_learned_is_a_parameter():
    images = jnp.ones((1, 16, 16, 3))  # every patch the same: only a position tells them apart
    model, params = _tokens('none', images)
    out = np.asarray(model.apply({'params': params}, images))
    assert np.ptp(out[0, 1:], axis=0).max() < 1e-5  # without one, all patch tokens are equal
    model, same = _tokens('sincos', images)
    assert jax.tree.structure(same) == jax.tree.structure(params)  # no parameter added
    out = np.asarray(model.apply({'params': params}, images))
    assert np.ptp(out[0, 1:], axis=0).max() > 1e-2
    model, learned = _tokens('learned', images)
    assert learned['pos_embed'].shape == (1, 1 + 16, 16)


def test_an_unknown_kind_is_one_line_naming_the_key():
    with pytest.raises(ValueError, match=r"model\.vision\.abs_pos_emb must be .* got 'rope'"):
        _tokens('rope', jnp.ones((1, 16, 16, 3)))
