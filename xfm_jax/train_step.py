"""The functional pre-training step: streams -> objectives -> optimizer update(s).

``batch`` is ``{stream: {field: array}}`` (see ``xfm_jax.streams``) holding any subset of
text, image, image_text, region and video. ``config.streams[stream]`` names the objectives of a
stream with their weights. Two update schedules, both inside one jitted function:

* ``summed``: every stream's weighted losses are added and the optimizer steps once (X²-VLM).
* ``reference``: X-FM's iteration of docs/design.md §9, sequential updates over stream groups
  (``text`` | ``region, image`` | ``image_text`` by default), each group's gradients computed at
  the parameters left by the previous update; the learning-rate schedule ticks once per step.

A stream whose ``config.data.streams[stream].mixture`` mixes several tasks also reports each
objective's loss on each task's rows, ``<stream>/<objective>_loss/<source>`` (``source_names``),
as clu Averages whose window mean weighs rows as the loss does (``summaries.by_source``).

Gradient accumulation splits every stream into ``train.grad_accum_steps`` micro-batches (strided,
so each device keeps its own rows) and averages their gradients. Note that batch-level objectives
(ITC's in-batch negatives, ITM's hard negatives) then see micro-batches.

This module imports no TensorFlow or seqio: it runs and benchmarks with jax, flax and optax.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from xfm_jax import objectives as objectives_lib
from xfm_jax import optim, streams as streams_lib, summaries
from xfm_jax.models.model import VisionLanguageModel, init_variables

PyTree = Any


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: PyTree
    opt_state: PyTree


def update_groups(config: ml_collections.ConfigDict) -> list[tuple[str, ...]]:
    """Stream groups, one optimizer update each, in order. ``train.schedule`` picks them."""
    schedule = config.train.schedule
    order = tuple(streams_lib.STREAMS)
    streams = [s for s in order if s in config.streams]
    if schedule == 'summed':
        return [tuple(streams)]
    if schedule == 'reference':
        groups = [tuple(s.strip() for s in group.split(',') if s.strip())
                  for group in config.train.reference_groups.split(';')]
        unknown = sorted({s for g in groups for s in g} - set(order))
        if unknown:
            raise ValueError(f'train.reference_groups names unknown streams {unknown}; streams '
                             f'are {order}.')
        missing = sorted(set(streams) - {s for g in groups for s in g})
        if missing:
            raise ValueError(f'Streams {missing} are in config.streams but in no group of '
                             f'train.reference_groups={config.train.reference_groups!r}.')
        # Streams the config does not train are left out; a group left empty disappears.
        groups = [tuple(s for s in g if s in config.streams) for g in groups]
        return [g for g in groups if g]
    raise ValueError(f"train.schedule must be 'summed' or 'reference', got {schedule!r}.")


def make_optimizer(config: ml_collections.ConfigDict):
    """The optimizer and its schedule (indexed by train step, one tick per step)."""
    updates_per_step = len(update_groups(config))
    return optim.make_optimizer(config.optimizer, config.train.total_steps,
                                updates_per_step=updates_per_step)


def create_train_state(model: VisionLanguageModel, tx: optax.GradientTransformation, rng,
                       text_len: int = 8) -> TrainState:
    """Fresh state with flax-boxed params (logical axes), for ``jax.eval_shape`` + shardings.
    ``nn.unbox`` it (or jit it with ``out_shardings``) before training."""
    params = init_variables(model, rng, text_len=text_len)['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def objective_settings(config: ml_collections.ConfigDict, batch_shards: int):
    """``config.objectives`` with 'auto' values resolved: ``itm.negative_groups`` 0 means one
    group per batch shard, i.e. hard negatives mined within each device's local batch."""
    settings = ml_collections.ConfigDict(config.objectives.to_dict())
    if not settings.itm.negative_groups:
        settings.itm.negative_groups = batch_shards
    return settings


def source_names(config: ml_collections.ConfigDict) -> dict[str, tuple[str, ...]]:
    """``{stream: short source names}`` of the streams whose data mixture has several tasks, in
    the order of the batch's ``source`` field (``streams.sources``, ``streams.source_name``);
    {} for a run without ``config.data`` (random batches)."""
    if 'data' not in config:
        return {}
    out = {}
    for stream in config.streams:
        tasks = streams_lib.sources(config.data, stream)
        if len(tasks) > 1:
            out[stream] = tuple(streams_lib.source_name(task, stream) for task in tasks)
    return out


def make_loss_fn(model: VisionLanguageModel, config: ml_collections.ConfigDict,
                 streams: tuple[str, ...], batch_shards: int = 1) -> Callable:
    """``loss_fn(params, batch, rng) -> (total_loss, metrics)`` over the given streams;
    ``batch_shards``: how many devices split the batch (see :func:`objective_settings`).
    Metrics are scalars, and clu Averages for the per-source losses (:func:`source_names`)."""
    settings = objective_settings(config, batch_shards)
    stream_index = {stream: i for i, stream in enumerate(streams_lib.STREAMS)}  # rng per stream
    mixed = source_names(config)

    def loss_fn(params, batch, rng):
        dropout_rng, objective_rng = jax.random.split(rng)
        bound = model.bind({'params': params}, rngs={'dropout': dropout_rng})
        total = jnp.zeros((), jnp.float32)
        metrics = {}
        for stream in streams:
            if stream not in batch:
                continue
            weights = {k: float(v) for k, v in config.streams[stream].items() if float(v)}
            stream_rng = jax.random.fold_in(objective_rng, stream_index[stream])
            encoded = objectives_lib.encode_stream(
                bound, stream, batch[stream], train=True, objectives=tuple(weights))
            for i, (name, weight) in enumerate(sorted(weights.items())):
                fn = objectives_lib.get(name, stream)
                args = (bound, encoded, batch[stream], jax.random.fold_in(stream_rng, i),
                        settings[name])
                with_rows = objectives_lib.OBJECTIVES[name].with_rows
                if stream in mixed and with_rows is not None:
                    loss, objective_metrics, rows = with_rows(*args)
                    metrics.update(summaries.by_source(f'{stream}/{name}_loss', rows,
                                                       batch[stream]['source'], mixed[stream]))
                else:
                    loss, objective_metrics = fn(*args)
                total = total + weight * loss
                metrics[f'{stream}/{name}_loss'] = loss
                metrics.update({f'{stream}/{k}': v for k, v in objective_metrics.items()})
        metrics['loss'] = total
        return total, metrics

    return loss_fn


def _micro_batches(batch, num: int):
    """[B, ...] -> [num, B // num, ...] taking every num-th row, so rows stay on their device."""
    def split(x):
        if x.shape[0] % num:
            raise ValueError(f'Batch of {x.shape[0]} is not divisible by '
                             f'train.grad_accum_steps={num}.')
        x = x.reshape(x.shape[0] // num, num, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)
    return jax.tree.map(split, batch)


def accumulated_grads(loss_fn, params, batch, rng, num_micro: int):
    """Mean loss, gradients and metrics over ``num_micro`` micro-batches (lax.scan)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_micro == 1:
        (_, metrics), grads = grad_fn(params, batch, rng)
        return grads, metrics

    def body(carry, xs):
        grads_sum, metrics_sum = carry
        micro, index = xs
        (_, metrics), grads = grad_fn(params, micro, jax.random.fold_in(rng, index))
        return (jax.tree.map(jnp.add, grads_sum, grads),
                jax.tree.map(jnp.add, metrics_sum, metrics)), None

    micro = _micro_batches(batch, num_micro)
    first = jax.tree.map(lambda x: x[0], micro)
    zeros_metrics = jax.tree.map(jnp.zeros_like,
                                 jax.eval_shape(lambda: grad_fn(params, first, rng)[0][1]))
    zeros_grads = jax.tree.map(jnp.zeros_like, params)
    (grads, metrics), _ = jax.lax.scan(body, (zeros_grads, zeros_metrics),
                                       (micro, jnp.arange(num_micro)))
    scale = 1.0 / num_micro
    return jax.tree.map(lambda g: g * scale, grads), jax.tree.map(lambda m: m * scale, metrics)


def make_train_step(model: VisionLanguageModel, config: ml_collections.ConfigDict,
                    tx: optax.GradientTransformation, schedule: Callable,
                    batch_shards: int = 1) -> Callable:
    """``train_step(state, batch, rng) -> (state, metrics)``; jit it with :func:`jit_train_step`.

    ``rng`` is the run's base key: the step folds in ``state.step``, so a resumed run draws the
    same randomness as an uninterrupted one.
    """
    groups = update_groups(config)
    loss_fns = [make_loss_fn(model, config, group, batch_shards) for group in groups]
    temp_range = tuple(config.model.temp_range)
    num_micro = config.train.grad_accum_steps

    def train_step(state: TrainState, batch, rng):
        step_rng = jax.random.fold_in(rng, state.step)
        params, opt_state = state.params, state.opt_state
        metrics = {}
        for index, (group, loss_fn) in enumerate(zip(groups, loss_fns)):
            group_batch = {s: batch[s] for s in group if s in batch}
            if not group_batch:
                continue
            params = optim.clamp_temperature(params, *temp_range)
            grads, group_metrics = accumulated_grads(
                loss_fn, params, group_batch, jax.random.fold_in(step_rng, index), num_micro)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            suffix = '' if len(groups) == 1 else f'/update{index}'
            group_metrics['grad_norm'] = optax.global_norm(grads)
            metrics.update({(k + suffix if k in ('loss', 'grad_norm') else k): v
                            for k, v in group_metrics.items()})
        if len(groups) > 1:
            metrics['loss'] = sum(v for k, v in metrics.items() if k.startswith('loss/update'))
        params = optim.clamp_temperature(params, *temp_range)
        metrics['learning_rate'] = schedule(state.step)
        metrics['temperature'] = params['temp']
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def jit_train_step(train_step: Callable, state_shardings, batch_sharding) -> Callable:
    """jit with state sharded by the logical rules, the batch over ('data', 'fsdp'), the state
    donated (updated in place) and metrics replicated."""
    return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding, None),
                   out_shardings=(state_shardings, None), donate_argnums=(0,))


def unboxed_state_init(model, tx, text_len: int = 8) -> Callable:
    """``rng -> TrainState`` with plain arrays, to jit with ``out_shardings``."""
    return lambda rng: nn.unbox(create_train_state(model, tx, rng, text_len))
