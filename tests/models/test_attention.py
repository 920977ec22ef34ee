"""Attention paths: jax.nn.dot_product_attention ('xla') against the written-out einsum path and a
numpy softmax attention; cuDNN's even-length padding; add_bias's gradient."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import xfm_base
from xfm_jax.models import layers
from xfm_jax.models.model import build_model
from xfm_jax.models.text import TextEncoder
from xfm_jax.models.vision import VisionTransformer


def _numpy_attention(q, k, v, bias):
    """softmax(q k^T / sqrt(D) + bias) v in float64; q [B, T, H, D], k, v [B, S, H, D]."""
    q, k, v, bias = (np.asarray(a, np.float64) for a in (q, k, v, bias))
    logits = np.einsum('bthd,bshd->bhts', q, k) / np.sqrt(q.shape[-1]) + bias
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum('bhts,bshd->bthd', probs, v)


def _qkv_bias(length, key_length, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(2, length, 3, 8)).astype(np.float32)
    k = rng.normal(size=(2, key_length, 3, 8)).astype(np.float32)
    v = rng.normal(size=(2, key_length, 3, 8)).astype(np.float32)
    mask = np.ones((2, key_length), np.int32)
    mask[1, -2:] = 0  # the second example's last two keys are padding
    relpos = rng.normal(size=(1, 3, length, key_length)).astype(np.float32)
    bias = np.asarray(layers.padding_bias(jnp.asarray(mask), layers.CROSS_ATTENTION_MASK_VALUE))
    return q, k, v, bias + relpos


@pytest.mark.parametrize('length, key_length', [(6, 9), (7, 5)])
def test_fused_attention_and_its_cudnn_padding_match_numpy(length, key_length):
    q, k, v, bias = _qkv_bias(length, key_length)
    expected = _numpy_attention(q, k, v, bias)
    fused = layers.fused_attention(q, k, v, bias, 'xla')
    np.testing.assert_allclose(fused, expected, atol=1e-5, rtol=1e-5)
    # The padding cuDNN gets, run through the XLA implementation: the same values.
    padded = layers._pad_length_to_even(*(jnp.asarray(a) for a in (q, k, v, bias)))
    assert padded[0].shape[1] % 2 == 0 and padded[1].shape[1] % 2 == 0
    out = jax.nn.dot_product_attention(*padded[:3], bias=padded[3], implementation='xla')
    np.testing.assert_allclose(out[:, :length], expected, atol=1e-5, rtol=1e-5)


def _towers(impl):
    config = xfm_base.get_config('tiny').model
    config.attention_impl = impl
    model = build_model(config)
    return model.vision, model.text


def test_vision_tower_with_relative_position_bias_xla_equals_einsum():
    """Relative position bias in every block, no dropout on probabilities: both paths run."""
    (vision_einsum, _), (vision_xla, _) = _towers('einsum'), _towers('xla')
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    params = VisionTransformer(vision_einsum).init(jax.random.key(0), images)
    # Non-zero relative position tables, so the bias matters.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: jax.random.normal(jax.random.key(2), x.shape) * 0.5
        if 'relative_position_bias_table' in jax.tree_util.keystr(path) else x, params)
    for train in (False, True):  # drop-path only in training; the attention has no dropout
        rngs = {'dropout': jax.random.key(3)}
        a = VisionTransformer(vision_einsum).apply(params, images, train=train, rngs=rngs)
        b = VisionTransformer(vision_xla).apply(params, images, train=train, rngs=rngs)
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)


def test_text_tower_xla_equals_einsum_in_eval_and_keeps_einsum_under_dropout():
    (_, text_einsum), (_, text_xla) = _towers('einsum'), _towers('xla')
    ids = jax.random.randint(jax.random.key(1), (2, 10), 3, 500)
    mask = jnp.ones((2, 10), jnp.int32).at[1, 6:].set(0)  # padding keys
    params = TextEncoder(text_einsum).init(jax.random.key(0), ids, mask)
    a = TextEncoder(text_einsum).apply(params, ids, mask)
    b = TextEncoder(text_xla).apply(params, ids, mask)
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)
    # Training with attention dropout 0.1: the fused setting keeps the einsum path, so the same
    # dropout draws give the same numbers.
    rngs = {'dropout': jax.random.key(4)}
    a = TextEncoder(text_einsum).apply(params, ids, mask, train=True, rngs=rngs)
    b = TextEncoder(text_xla).apply(params, ids, mask, train=True, rngs=rngs)
    np.testing.assert_array_equal(a, b)
    # With attention dropout 0 the fused path runs in training too (same values up to rounding).
    no_dropout = dataclasses.replace(text_xla, dropout=0.0)
    c = TextEncoder(no_dropout).apply(params, ids, mask, train=True, rngs=rngs)
    d = TextEncoder(dataclasses.replace(text_einsum, dropout=0.0)).apply(
        params, ids, mask, train=True, rngs=rngs)
    np.testing.assert_allclose(c, d, atol=2e-5, rtol=2e-5)


def test_unknown_attention_impl_names_the_key():
    _, text = _towers('flash')
    ids = jnp.ones((1, 4), jnp.int32)
    with pytest.raises(ValueError, match='model.attention_impl'):
        TextEncoder(text).init(jax.random.key(0), ids, ids)


@pytest.mark.parametrize('x_shape, bias_shape', [
    ((4, 3, 7), (7,)),  # the MLM vocabulary bias over rows
    ((5, 2, 6, 6), (1, 2, 6, 6)),  # a relative position bias over the batch
    ((5, 2, 6, 6), (5, 1, 1, 6)),  # a padding bias (broadcast over heads and queries)
])
def test_add_bias_gradient_sums_over_broadcast_axes(x_shape, bias_shape):
    rng = np.random.default_rng(0)
    x, bias, weights = (rng.normal(size=s).astype(np.float32)
                        for s in (x_shape, bias_shape, x_shape))
    value, (grad_x, grad_bias) = jax.value_and_grad(
        lambda x, b: jnp.sum(layers.add_bias(x, b) * weights), argnums=(0, 1))(x, bias)
    np.testing.assert_allclose(value, np.sum((x + bias) * weights), rtol=1e-5)
    np.testing.assert_array_equal(grad_x, weights)
    axes = tuple(i for i, (a, b) in enumerate(zip(x_shape, (1,) * (len(x_shape) - len(bias_shape))
                                                  + bias_shape)) if b == 1 and a != 1)
    expected = weights.astype(np.float64).sum(axis=axes, keepdims=True).reshape(bias_shape)
    np.testing.assert_allclose(grad_bias, expected, rtol=1e-5, atol=1e-5)
