"""Optimiser tests: expected values are written by hand or come from a NumPy AdamW."""

import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.common import optimizer_config
from xfm_jax import optim


def _config(**overrides):
    config = optimizer_config()
    config.update(overrides)
    return config


def test_decay_mask_exempts_biases_and_norms():
    w = np.zeros((2, 2))
    params = {
        'vision': {
            'patch_embed': {'kernel': w, 'bias': w},
            'cls_token': w,
            'mask_token': w,
            'layer_0': {
                'attn': {'qkv': {'kernel': w}, 'q_bias': w, 'v_bias': w,
                         'relative_position_bias_table': w},
                'norm1': {'scale': w, 'bias': w},
                'gamma_1': w,
                'gamma_2': w,
            },
            'LayerNorm_0': {'scale': w, 'bias': w},
        },
        'text': {'word_embeddings': {'embedding': w}, 'ln_f': {'scale': w, 'bias': w}},
        'custom_rmsnorm': {'weight': w},  # gain under a module named *norm*
        'temp': w,
    }
    expected = {
        'vision': {
            'patch_embed': {'kernel': True, 'bias': False},
            'cls_token': True,
            'mask_token': True,
            'layer_0': {
                'attn': {'qkv': {'kernel': True}, 'q_bias': False, 'v_bias': False,
                         'relative_position_bias_table': False},
                'norm1': {'scale': False, 'bias': False},
                'gamma_1': True,
                'gamma_2': True,
            },
            'LayerNorm_0': {'scale': False, 'bias': False},
        },
        'text': {'word_embeddings': {'embedding': True}, 'ln_f': {'scale': False, 'bias': False}},
        'custom_rmsnorm': {'weight': False},
        'temp': True,
    }
    assert optim.decay_mask(params) == expected

    boxed = jax.tree.map(lambda x: nn.LogicallyPartitioned(x, ('embed', 'mlp')), params)
    assert nn.unbox(optim.decay_mask(boxed)) == expected


def test_lr_multipliers_first_match_wins():
    rules = optim.parse_lr_multipliers('cross_attention/query=3, cross_attention=2,^temp$=2.5')
    params = {
        'fusion': {'layer_0': {'cross_attention': {'query': {'kernel': 0}, 'key': {'kernel': 0}},
                               'attention': {'query': {'kernel': 0}}}},
        'temp': 0,
        'head': {'temp': 0},
    }
    assert optim.lr_multiplier_tree(params, rules) == {
        'fusion': {'layer_0': {
            'cross_attention': {'query': {'kernel': 3.0}, 'key': {'kernel': 2.0}},
            'attention': {'query': {'kernel': 1.0}}}},
        'temp': 2.5,
        'head': {'temp': 1.0},
    }


def test_default_lr_multipliers_cover_new_params():
    rules = optim.parse_lr_multipliers(optimizer_config().lr_multipliers)
    params = {name: {'kernel': 0} for name in
              ('vision_proj', 'text_proj', 'itm_head', 'bbox_head', 'vision', 'text')}
    params['fusion'] = {'layer_0': {'cross_attention': {'kernel': 0}, 'attention': {'kernel': 0}}}
    params['temp'] = 0
    assert optim.lr_multiplier_tree(params, rules) == {
        'vision_proj': {'kernel': 2.0}, 'text_proj': {'kernel': 2.0},
        'itm_head': {'kernel': 2.0}, 'bbox_head': {'kernel': 2.0},
        'vision': {'kernel': 1.0}, 'text': {'kernel': 1.0},
        'fusion': {'layer_0': {'cross_attention': {'kernel': 2.0}, 'attention': {'kernel': 1.0}}},
        'temp': 2.0,
    }


def test_mini_rates_on_the_mini_models_params():
    """The X-FM miniature: pretrained language tower 1x, the from-scratch vision tower and ITC
    projections 10x. Stage 1 (region stream alone) keeps the fresh fusion layer and its heads at
    the reference's 1x / 2x (at 10x the box head collapsed); stage 2 ('mini') trains them at
    10x with the rest, as X²-VLM's pretrained fusion layers."""
    from configs import x2vlm_base, xfm_base
    from xfm_jax import train_step as ts
    from xfm_jax.models.model import build_model

    def rates(config):
        model = build_model(config.model)
        params = jax.eval_shape(lambda r: ts.init_variables(model, r), jax.random.key(0))
        tree = optim.lr_multiplier_tree(
            params['params'], optim.parse_lr_multipliers(config.optimizer.lr_multipliers))
        flat = flax.traverse_util.flatten_dict(nn.unbox(tree), sep='/')
        out = {}
        for name, rate in flat.items():
            part = ('cross_attention' if '/cross_attention' in name else  # and its norm
                    name.split('/')[0] + ('/mlm_head' if '/mlm_head/' in name else ''))
            out.setdefault(part, set()).add(rate)
        return out

    from_scratch = {'text_encoder': {1.0}, 'text_encoder/mlm_head': {10.0},
                    'vision_encoder': {10.0}, 'vision_proj': {10.0}, 'text_proj': {10.0},
                    'temp': {10.0}}
    assert rates(xfm_base.get_config('mini_regions')) == {
        **from_scratch, 'fusion_encoder': {1.0}, 'fusion_encoder/mlm_head': {1.0},
        'cross_attention': {2.0}, 'itm_head': {2.0}, 'bbox_head': {2.0}}
    assert rates(xfm_base.get_config('mini')) == {
        **from_scratch, 'fusion_encoder': {10.0}, 'fusion_encoder/mlm_head': {10.0},
        'cross_attention': {10.0}, 'itm_head': {10.0}, 'bbox_head': {10.0}}
    x2vlm = rates(x2vlm_base.get_config('mini'))
    assert x2vlm['text_encoder'] == {1.0} and x2vlm['cross_attention'] == {10.0}


@pytest.mark.parametrize('spec', ['vision_proj', '=2', 'a=2,b'])
def test_parse_lr_multipliers_rejects_malformed(spec):
    with pytest.raises(ValueError, match='regex=multiplier'):
        optim.parse_lr_multipliers(spec)


def test_linear_schedule_by_hand():
    schedule = optim.make_schedule(_config(warmup_steps=100), total_steps=1100)
    for step, lr in [(0, 0.0), (50, 5e-5), (100, 1e-4), (600, 5e-5), (1100, 0.0), (1200, 0.0)]:
        np.testing.assert_allclose(schedule(step), lr, atol=1e-12)


def test_cosine_schedule_by_hand():
    schedule = optim.make_schedule(_config(warmup_steps=100, decay='cosine'), total_steps=1100)
    expected = [(0, 0.0), (50, 5e-5), (100, 1e-4), (350, 0.5 * (1 + math.cos(math.pi / 4)) * 1e-4),
                (600, 5e-5), (1100, 0.0)]
    for step, lr in expected:
        np.testing.assert_allclose(schedule(step), lr, atol=1e-12)


@pytest.mark.parametrize('overrides, total, match', [
    (dict(decay='step', warmup_steps=1), 10, "'linear' or 'cosine'"),
    (dict(warmup_steps=10), 10, 'warmup_steps=10, total_steps=10'),
])
def test_schedule_rejects_bad_config(overrides, total, match):
    with pytest.raises(ValueError, match=match):
        optim.make_schedule(_config(**overrides), total)


def _numpy_adamw(params, grads_per_step, lrs, decays, mults, b1, b2, eps, wd, clip):
    """PyTorch-AdamW reference with param groups (lr * mult, wd or 0) and global-norm clipping."""
    params = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    for t, (grads, lr) in enumerate(zip(grads_per_step, lrs), start=1):
        norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
        factor = min(1.0, clip / norm)
        for k in params:
            g = grads[k] * factor
            group_lr = lr * mults[k]
            params[k] = params[k] * (1 - group_lr * wd * decays[k])
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g ** 2
            m_hat, v_hat = m[k] / (1 - b1 ** t), v[k] / (1 - b2 ** t)
            params[k] = params[k] - group_lr * m_hat / (np.sqrt(v_hat) + eps)
    return params


def test_two_adamw_steps_match_numpy_reference():
    # wd 0.1 and lr 1e-2 make the decay term visible at float32 precision.
    config = _config(warmup_steps=0, learning_rate=1e-2, weight_decay=0.1,
                     lr_multipliers='itm_head=2')
    tx, schedule = optim.make_optimizer(config, total_steps=10)
    rng = np.random.default_rng(0)
    flat = {'dense/kernel': rng.normal(size=(2, 3)), 'dense/bias': rng.normal(size=(3,)),
            'itm_head/kernel': rng.normal(size=(3, 2))}
    raw = [{k: rng.normal(size=p.shape) for k, p in flat.items()} for _ in range(2)]
    # Step 1 has global norm 10 (clipped to 1), step 2 has norm 0.5 (not clipped).
    grads_per_step = []
    for g, norm in zip(raw, (10.0, 0.5)):
        total = np.sqrt(sum(np.sum(x ** 2) for x in g.values()))
        grads_per_step.append({k: x * norm / total for k, x in g.items()})

    def nest(d):
        return {'dense': {'kernel': jnp.float32(d['dense/kernel']),
                          'bias': jnp.float32(d['dense/bias'])},
                'itm_head': {'kernel': jnp.float32(d['itm_head/kernel'])}}

    params = nest(flat)
    state = tx.init(params)
    for grads in grads_per_step:
        updates, state = tx.update(nest(grads), state, params)
        params = optax.apply_updates(params, updates)

    # lr at optimiser steps 0 and 1: warmup 0, linear decay to 0 over 10 steps.
    lrs = [1e-2, 0.9e-2]
    assert [float(schedule(s)) for s in (0, 1)] == pytest.approx(lrs)
    expected = _numpy_adamw(
        flat, grads_per_step, lrs,
        decays={'dense/kernel': 1, 'dense/bias': 0, 'itm_head/kernel': 1},
        mults={'dense/kernel': 1, 'dense/bias': 1, 'itm_head/kernel': 2},
        b1=0.9, b2=0.98, eps=1e-8, wd=0.1, clip=1.0)
    for k, v in nest(expected).items():
        for leaf, value in v.items():
            np.testing.assert_allclose(params[k][leaf], value, rtol=1e-5, atol=1e-6,
                                       err_msg=f'{k}/{leaf}')


def test_lr_constant_within_a_train_step_of_several_updates():
    # Constant gradient 1: Adam's m_hat / sqrt(v_hat) is exactly 1, so an update is -lr/(1 + eps).
    config = _config(warmup_steps=0, weight_decay=0.0, lr_multipliers='')
    tx, schedule = optim.make_optimizer(config, total_steps=10, updates_per_step=2)
    params = {'w': jnp.zeros(())}
    state = tx.init(params)
    updates = []
    for _ in range(4):
        update, state = tx.update({'w': jnp.ones(())}, state, params)
        updates.append(float(update['w']))
    # Train steps 0, 0, 1, 1: lr 1e-4, then 0.9e-4 (linear decay to 0 at train step 10).
    np.testing.assert_allclose(updates, [-1e-4, -1e-4, -0.9e-4, -0.9e-4], rtol=1e-6)
    np.testing.assert_allclose(schedule(1), 0.9e-4, rtol=1e-6)


def test_multisteps_accumulation_equals_mean_gradient():
    tx, _ = optim.make_optimizer(_config(warmup_steps=0), total_steps=10)
    params = {'w': jnp.array([1.0, -2.0]), 'b': {'bias': jnp.array([0.5])}}
    g1 = {'w': jnp.array([0.3, 0.1]), 'b': {'bias': jnp.array([-0.2])}}
    g2 = {'w': jnp.array([-0.1, 0.5]), 'b': {'bias': jnp.array([0.4])}}

    direct, _ = tx.update(jax.tree.map(lambda a, b: (a + b) / 2, g1, g2), tx.init(params), params)

    accumulating = optax.MultiSteps(tx, every_k_schedule=2)
    state = accumulating.init(params)
    _, state = accumulating.update(g1, state, params)
    accumulated, _ = accumulating.update(g2, state, params)
    jax.tree.map(np.testing.assert_allclose, accumulated, direct)


def test_clamp_temperature():
    params = {'temp': jnp.float32(0.7), 'vision_proj': {'kernel': jnp.full((2,), 9.0)}}
    clamp = jax.jit(lambda p, temp: optim.clamp_temperature({**p, 'temp': temp}, 0.001, 0.5))
    for temp, expected in [(0.7, 0.5), (1e-5, 0.001), (0.07, 0.07)]:
        out = clamp(params, jnp.float32(temp))
        np.testing.assert_allclose(out['temp'], expected, rtol=1e-6)
        np.testing.assert_array_equal(out['vision_proj']['kernel'], [9.0, 9.0])
    with pytest.raises(KeyError, match="no top-level 'temp'"):
        optim.clamp_temperature({'vision_proj': {}}, 0.001, 0.5)
