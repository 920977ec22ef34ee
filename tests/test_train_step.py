"""The functional step: sharded equivalence, schedules, accumulation, FLOP count vs XLA."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks.train_step import synthetic_streams
from configs import xfm_base
from xfm_jax import flops, partitioning, train_step as ts
from xfm_jax.models.model import build_model


def _config(module=xfm_base, streams=None):
    config = module.get_config('tiny')
    if streams is not None:
        for stream in list(config.streams):
            if stream not in streams:
                del config.streams[stream]
    return config


def _params(model, tx):
    return nn.unbox(ts.create_train_state(model, tx, jax.random.key(0))).params


@functools.lru_cache(maxsize=None)
def _single_device_reference():
    """Loss and gradients of the X-FM image_text objectives (itc, itm, imlm, mim) on one device.
    Scanned layers keep the 4 compiles of this comparison affordable on 2 CPU cores."""
    config = _config(streams=('image_text',))
    config.model.scan_layers = True
    model = build_model(config.model)
    tx, _ = ts.make_optimizer(config)
    params = _params(model, tx)
    batch, _ = synthetic_streams(config, 1.0, list(config.streams))
    loss_fn = ts.make_loss_fn(model, config, tuple(config.streams))
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, metrics), grads = grad_fn(params, batch, jax.random.key(3))
    return config, model, params, batch, float(loss), jax.device_get(grads)


@pytest.mark.parametrize('rules', ['dp', 'fsdp', 'fsdp_tp'])
def test_sharded_loss_and_grads_equal_single_device(rules):
    config, model, params, batch, loss, grads = _single_device_reference()
    mesh = partitioning.make_mesh(dict(data=2, fsdp=2, tensor=2))
    logical = partitioning.get_rules(rules)
    tx, _ = ts.make_optimizer(config)
    abstract = jax.eval_shape(lambda r: ts.create_train_state(model, tx, r), jax.random.key(0))
    param_sh = partitioning.state_shardings(abstract, mesh, logical).params
    sharded_params = jax.device_put(params, param_sh)
    loss_fn = ts.make_loss_fn(model, config, tuple(config.streams))
    with partitioning.sharding_context(mesh, logical):
        sharded_batch = partitioning.shard_batch(batch, mesh)
        grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True),
                          in_shardings=(param_sh, partitioning.batch_sharding(mesh), None))
        (sharded_loss, _), sharded_grads = grad_fn(sharded_params, sharded_batch,
                                                   jax.random.key(3))
    assert abs(float(sharded_loss) - loss) < 1e-5
    # 1e-5 relative to each gradient's scale: sharded reductions add in another order.
    diffs = jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - b)) / max(1.0, np.max(np.abs(b)))),
        sharded_grads, grads)
    worst = max(jax.tree.leaves(diffs))
    assert worst < 1e-5, worst
    # The gradients are not trivially zero: the comparison means something.
    assert max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads)) > 1e-3


def test_reference_schedule_is_three_sequential_updates():
    """One reference step == sequential optimizer updates done by hand, group by group
    (text and image streams keep it cheap: text MLM, then MIM at the updated parameters)."""
    config = _config(streams=('text', 'image'))
    config.model.scan_layers = True
    model = build_model(config.model)
    tx, schedule = ts.make_optimizer(config)
    state = nn.unbox(ts.create_train_state(model, tx, jax.random.key(0)))
    state = state.replace(step=jnp.asarray(3, jnp.int32))  # past step 0 (lr 0 in warmup)
    batch, _ = synthetic_streams(config, 1.0, list(config.streams))
    rng = jax.random.key(5)
    new_state, metrics = jax.jit(ts.make_train_step(model, config, tx, schedule))(state, batch, rng)

    groups = ts.update_groups(config)
    assert groups == [('text',), ('image',)]
    params, opt_state = state.params, state.opt_state
    step_rng = jax.random.fold_in(rng, 3)
    for index, group in enumerate(groups):
        loss_fn = ts.make_loss_fn(model, config, group)
        sub = {s: batch[s] for s in group}
        params = {**params, 'temp': jnp.clip(params['temp'], 0.001, 0.5)}
        grads = jax.jit(jax.grad(lambda p: loss_fn(p, sub, jax.random.fold_in(step_rng, index))[0]))(
            params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new_state.params, params)
    assert max(jax.tree.leaves(diffs)) < 1e-6
    # Every update moved the parameters; the lr logged is the schedule at this step.
    assert float(metrics['learning_rate']) == pytest.approx(float(schedule(3)))
    assert int(new_state.step) == 4


def test_grad_accumulation_equals_mean_of_micro_batch_gradients():
    config = _config(streams=('text',))
    model = build_model(config.model)
    tx, _ = ts.make_optimizer(config)
    params = _params(model, tx)
    batch, _ = synthetic_streams(config, 1.0, ['text'])
    loss_fn = ts.make_loss_fn(model, config, ('text',))
    rng = jax.random.key(0)
    grads, _ = jax.jit(lambda p: ts.accumulated_grads(loss_fn, p, batch, rng, 2))(params)
    # By hand: strided halves (rows 0,2,4,.. and 1,3,5,..) with the micro-batch rngs.
    halves = [jax.tree.map(lambda x, i=i: x[i::2], batch) for i in range(2)]
    expected = [jax.jit(jax.grad(lambda p, b, r: loss_fn(p, b, r)[0]))(
        params, half, jax.random.fold_in(rng, i)) for i, half in enumerate(halves)]
    expected = jax.tree.map(lambda a, b: (a + b) / 2, *expected)
    diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), grads, expected)
    assert max(jax.tree.leaves(diffs)) < 1e-6


def test_reference_groups_must_cover_streams():
    config = _config()
    config.train.reference_groups = 'text;image_text'
    with pytest.raises(ValueError, match=r"\['image', 'region'\]"):
        ts.update_groups(config)


def test_analytic_flops_match_xla_cost_analysis():
    """Forward FLOPs of the vision + text encoders vs XLA's count of the same computation.
    Wide enough (256) that matmuls dominate, as in real models; XLA also counts elementwise
    ops (norms, softmax, GELU), which the analytic count leaves out."""
    config = _config()
    for tower in (config.model.vision, config.model.text):
        tower.update(width=256, mlp_dim=1024, num_heads=4)
    model = build_model(config.model)
    variables = nn.unbox(model.init(jax.random.key(0), *[
        jnp.zeros(s, d) for s, d in (((1, 32, 32, 3), jnp.float32), ((1, 16), jnp.int32),
                                     ((1, 16), jnp.int32))]))
    images = jnp.zeros((4, 32, 32, 3))
    ids = jnp.ones((4, 16), jnp.int32)
    image_flops = jax.jit(lambda v, x: model.apply(v, x, method='encode_image')).lower(
        variables, images).compile().cost_analysis()['flops']
    text_flops = jax.jit(lambda v, t: model.apply(v, t, t, method='encode_text')).lower(
        variables, ids).compile().cost_analysis()['flops']
    dims = flops.Dims.from_config(config.model)
    assert 4 * flops.vision_forward(dims) == pytest.approx(image_flops, rel=0.05)
    assert 4 * flops.text_forward(dims, 16) == pytest.approx(text_flops, rel=0.05)


def test_analytic_fusion_flops_count_image_keys_and_values_once_per_image():
    """Six texts over two images (three each), text length 2 so that the image keys/values
    weigh: XLA's count of the fusion pass matches the per-image count, not the per-text one."""
    config = _config()
    for tower in (config.model.vision, config.model.text):
        tower.update(width=256, mlp_dim=1024, num_heads=4)
    model = build_model(config.model)
    dims = flops.Dims.from_config(config.model)
    tokens = dims.num_patches + 1
    variables = nn.unbox(model.init(jax.random.key(0), *[
        jnp.zeros(s, d) for s, d in (((1, 32, 32, 3), jnp.float32), ((1, 2), jnp.int32),
                                     ((1, 2), jnp.int32))]))
    hidden, mask = jnp.zeros((6, 2, 256)), jnp.ones((6, 2), jnp.int32)
    images = jnp.zeros((2, tokens, 256))
    fuse = lambda v, h, t: model.apply(  # noqa: E731
        v, h, mask, t, image_rows=jnp.zeros((2, 3), jnp.int32), method='fuse')
    xla = jax.jit(fuse).lower(variables, hidden, images).compile().cost_analysis()['flops']
    rows = 6 * flops.fusion_forward(dims, 2)
    assert rows + 2 * flops.cross_attention_kv_forward(dims, tokens) == pytest.approx(
        xla, rel=0.05)
    assert rows + 6 * flops.cross_attention_kv_forward(dims, tokens) > 1.2 * xla
