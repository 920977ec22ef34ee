"""bf16 compute with fp32 parameters (``model.dtype=bfloat16``): one step of the tiny X-FM on all
four streams next to the same step in fp32."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.train_step import synthetic_streams
from configs import xfm_base
from xfm_jax import train_step as ts
from xfm_jax.models.model import build_model

# bf16 keeps 8 significant bits: each rounding moves a value by at most u = 2**-9 of itself.
BF16_UNIT_ROUNDOFF = 2.0 ** -9
# On the longest path of the tiny model (embeddings, 2 text layers, 2 fusion layers, a head) a
# value is rounded to bf16 about 8 times per layer (LN output, q, k, v, probabilities, attention
# output, MLP hidden, MLP output) plus once in the embeddings: ~40 roundings. Errors that add up
# without cancelling, with unit gain, move a head's input by at most 40 u ~= 7.8 %; the losses
# (cross-entropies of small logits at initialisation, MSE and L1 on the same features) are at
# most about that sensitive relative to their size, so 40 u of the fp32 total is a worst case
# that rounding alone cannot exceed, and a softmax, LayerNorm or loss reduction taken in bf16
# (errors of whole units on values of ~10 and -1e9 masks) would.
RELATIVE_BOUND = 40 * BF16_UNIT_ROUNDOFF


@functools.lru_cache(maxsize=None)
def _one_step(dtype: str):
    """Loss, metrics, gradients and parameters of one X-FM step (all objectives summed)."""
    config = xfm_base.get_config('tiny')
    config.model.scan_layers = True  # cheaper compiles
    config.model.dtype = dtype
    model = build_model(config.model)
    tx, _ = ts.make_optimizer(config)
    params = jax.jit(lambda r: nn.unbox(ts.create_train_state(model, tx, r)).params)(
        jax.random.key(0))
    batch, _ = synthetic_streams(config, 1.0, list(config.streams))
    loss_fn = ts.make_loss_fn(model, config, tuple(config.streams))
    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, batch, jax.random.key(3))
    return float(loss), jax.device_get(metrics), jax.device_get(grads), params


@pytest.mark.slow  # two compiles of the four-stream step: about 5 CPU minutes here
def test_bf16_step_loss_is_within_rounding_of_fp32_with_fp32_params_and_grads():
    loss32, _, grads32, params32 = _one_step('float32')
    loss16, _, grads16, params16 = _one_step('bfloat16')
    # The same fp32 parameters in both runs (init does not depend on the compute dtype).
    for a, b in zip(jax.tree.leaves(params32), jax.tree.leaves(params16)):
        assert a.dtype == b.dtype == jnp.float32
        np.testing.assert_array_equal(a, b)
    assert all(g.dtype == np.float32 for g in jax.tree.leaves(grads16))
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads16))
    difference = abs(loss16 - loss32)
    assert difference <= RELATIVE_BOUND * abs(loss32), (loss16, loss32)
    # bf16 really computed: the losses differ (a dtype that never reached the layers would not).
    assert difference > 0
    # The gradients point the same way: cosine similarity over all parameters near 1.
    flat32 = np.concatenate([g.ravel() for g in jax.tree.leaves(grads32)]).astype(np.float64)
    flat16 = np.concatenate([g.ravel() for g in jax.tree.leaves(grads16)]).astype(np.float64)
    cosine = flat32 @ flat16 / (np.linalg.norm(flat32) * np.linalg.norm(flat16))
    assert cosine > 0.99, cosine


def test_bf16_softmax_layernorm_and_reductions_are_fp32():
    """In the bf16 step's program no exponential (softmax, cross-entropy) and no sum or max
    takes a bf16 operand, except GELU's erf (elementwise) and the region stream's repeat of image
    tokens per text (a sum of a few values in the backward pass); the matmuls are bf16."""
    config = xfm_base.get_config('tiny')
    config.model.scan_layers = True
    config.model.dtype = 'bfloat16'
    model = build_model(config.model)
    tx, _ = ts.make_optimizer(config)
    params = jax.eval_shape(lambda r: nn.unbox(ts.create_train_state(model, tx, r)).params,
                            jax.random.key(0))
    batch, _ = synthetic_streams(config, 1.0, list(config.streams))
    loss_fn = ts.make_loss_fn(model, config, tuple(config.streams))
    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss_fn, has_aux=True))(
        params, batch, jax.random.key(3))
    offenders, bf16_dots = [], 0

    def walk(closed):
        nonlocal bf16_dots
        for eqn in closed.eqns:
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)
            if not any(getattr(v.aval, 'dtype', None) == jnp.bfloat16 for v in eqn.invars):
                continue
            where = str(eqn.source_info.name_stack)
            if eqn.primitive.name == 'dot_general':
                bf16_dots += 1
            elif eqn.primitive.name == 'exp' and ('mlp' in where or 'ffn' in where
                                                  or 'head' in where):
                continue  # the erf of GELU
            elif eqn.primitive.name in ('exp', 'reduce_sum', 'reduce_max', 'log', 'logistic'):
                offenders.append((eqn.primitive.name, where))

    walk(jaxpr.jaxpr)
    region_repeat = [o for o in offenders if o == ('reduce_sum', 'transpose(jvp())')]
    assert len(region_repeat) <= 1 and len(offenders) == len(region_repeat), offenders
    assert bf16_dots > 100
