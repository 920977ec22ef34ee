"""Device mesh, logical-axis rules and shardings. Parallelism is configuration, not code.

Modules name the axes of their params (``nn.with_logical_partitioning``) and activations
(``nn.with_logical_constraint``) with logical names; a rule preset maps those names onto the mesh
axes ('data', 'fsdp', 'tensor'). A name a preset does not mention is replicated.

Logical names:
  params:      embed, heads, kv, mlp, vocab, layers (leading axis of nn.scan-stacked params),
               relpos, proj, norm, patch, channels, frames, positions
  activations: batch, length, act_embed, act_heads, act_kv, act_mlp, act_vocab

Typical use (flax lm1b pattern; :func:`setup_state` is the part every program shares)::

    mesh = make_mesh(config.partitioning.mesh)
    rules = get_rules(config.partitioning.rules)
    # init_fn(rng): params boxed, tx.init on the boxed params -> abstract -> shardings ->
    # restore(abstract, shardings), or jit(unbox(init_fn), out_shardings)(key(seed))
    setup = setup_state(init_fn, mesh, rules, seed=seed, restore=restore)
    with sharding_context(mesh, rules):
        state, metrics = train_step(setup.state, shard_batch(batch, mesh))
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')
# The batch is split over every data-parallel axis; 'tensor' shards model dims instead.
BATCH_AXES = ('data', 'fsdp')

LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

_DP: LogicalRules = (('batch', BATCH_AXES),)
_FSDP: LogicalRules = _DP + (('embed', 'fsdp'),)
_FSDP_TP: LogicalRules = _FSDP + (
    ('heads', 'tensor'), ('mlp', 'tensor'), ('vocab', 'tensor'),
    ('act_heads', 'tensor'), ('act_mlp', 'tensor'), ('act_vocab', 'tensor'),
)
RULE_PRESETS: dict[str, LogicalRules] = {
    'dp': _DP,  # params replicated
    'fsdp': _FSDP,  # params split along their model width over 'fsdp' (ZeRO-3 style)
    'fsdp_tp': _FSDP_TP,  # plus Megatron-style tensor parallelism over heads/mlp/vocab
}


def get_rules(preset: str) -> LogicalRules:
    """Logical-axis rules of a named preset ('dp', 'fsdp' or 'fsdp_tp')."""
    if preset not in RULE_PRESETS:
        raise ValueError(f'unknown partitioning rules preset {preset!r}; '
                         f'choose one of {sorted(RULE_PRESETS)}')
    return RULE_PRESETS[preset]


def make_mesh(mesh_config: Mapping[str, int],
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A ('data', 'fsdp', 'tensor') mesh with sizes from ``mesh_config``; one size may be -1.

    Axes are Auto (not jax.make_mesh's default Explicit) because linen's logical constraints and
    ``jit(out_shardings=...)`` drive the partitioning here, which Explicit axes reject.
    """
    devices = jax.devices() if devices is None else list(devices)
    sizes = {axis: int(mesh_config[axis]) for axis in MESH_AXES}
    if unknown := set(mesh_config) - set(MESH_AXES):
        raise ValueError(f'unknown mesh axes {sorted(unknown)} in {sizes}; axes are {MESH_AXES}')
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1 or any(size < 1 and size != -1 for size in sizes.values()):
        raise ValueError(f'mesh sizes must be positive with at most one -1, got {sizes}')
    if free:
        known = math.prod(size for size in sizes.values() if size != -1)
        if len(devices) % known:
            raise ValueError(f'mesh {sizes}: {len(devices)} devices are not divisible by the '
                             f'fixed axes product {known}')
        sizes[free[0]] = len(devices) // known
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(f'mesh {sizes} needs {math.prod(sizes.values())} devices, '
                         f'but {len(devices)} are available')
    return jax.make_mesh(tuple(sizes.values()), MESH_AXES,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def _mesh_axes_size(mesh: jax.sharding.Mesh, axes: str | tuple[str, ...]) -> int:
    return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


def _divisible_spec(spec: P, shape: tuple[int, ...], names: Sequence[Any],
                    mesh: jax.sharding.Mesh, fallbacks: set) -> P:
    """``spec`` with every dim whose size the assigned mesh axes do not divide replicated."""
    dims = list(spec) + [None] * (len(shape) - len(spec))
    for i, axes in enumerate(dims):
        if axes is not None and shape[i] % _mesh_axes_size(mesh, axes):
            fallbacks.add((names[i], shape[i], axes))
            dims[i] = None
    return P(*dims)


def state_shardings(abstract_state: Any, mesh: jax.sharding.Mesh, rules: LogicalRules) -> Any:
    """NamedShardings for a (``jax.eval_shape``-d) train state whose params are flax-boxed.

    ``nn.LogicallyPartitioned`` leaves are mapped through ``rules``; ``nn.Partitioned`` leaves use
    their mesh axes as given; all other leaves (step counters, scalars, unboxed arrays) are
    replicated. Optimizer states mirror the params' shardings when ``tx.init`` was applied to the
    boxed params (optax's ``tree_map`` keeps the boxes). A dim whose size the assigned mesh axes do
    not divide is replicated instead, with one warning listing all such cases.

    Each box is replaced by one NamedSharding, so the result matches the unboxed state and is a
    valid ``out_shardings`` prefix of the boxed one.
    """
    fallbacks: set[tuple[Any, int, Any]] = set()

    def leaf_sharding(x):
        if not isinstance(x, nn.Partitioned):
            return NamedSharding(mesh, P())
        if isinstance(x, nn.LogicallyPartitioned):
            spec = nn.logical_to_mesh_axes(x.names, rules)
        else:
            spec = P(*x.names)
        return NamedSharding(mesh, _divisible_spec(spec, x.value.shape, x.names, mesh, fallbacks))

    shardings = jax.tree.map(leaf_sharding, abstract_state,
                             is_leaf=lambda x: isinstance(x, nn.Partitioned))
    if fallbacks:
        logging.warning('replicating dims not divisible by their mesh axes (logical name, size, '
                        'mesh axes): %s', sorted(fallbacks, key=str))
    return shardings


def num_batch_shards(mesh: jax.sharding.Mesh) -> int:
    """How many pieces the batch is split into (the product of the batch mesh axes)."""
    return _mesh_axes_size(mesh, BATCH_AXES)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) dim split over ('data', 'fsdp'), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def shard_batch(batch: Any, mesh: jax.sharding.Mesh) -> Any:
    """Turns a host-local pytree of numpy arrays into global jax arrays split along the batch dim.

    Each process passes its own slice of the global batch (multi-host safe): the global batch size
    is the local one times ``jax.process_count()``.
    """
    sharding = batch_sharding(mesh)
    shards = _mesh_axes_size(mesh, BATCH_AXES)

    def put(path, x):
        x = np.asarray(x)
        global_batch = x.shape[0] * jax.process_count() if x.ndim else 0
        if not x.ndim or global_batch % shards:
            raise ValueError(f'batch leaf {jax.tree_util.keystr(path)} of shape {x.shape}: global '
                             f'batch {global_batch} is not divisible by the {shards} batch shards '
                             f'of mesh axes {BATCH_AXES}')
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree_util.tree_map_with_path(put, batch)


@contextlib.contextmanager
def sharding_context(mesh: jax.sharding.Mesh, rules: LogicalRules) -> Iterator[None]:
    """Activates ``mesh`` and ``rules`` so ``nn.with_logical_constraint`` works in traced code.

    Call jitted steps inside it: rules are read while tracing, and the active mesh is part of
    jit's cache key, so a call outside would retrace without the constraints.

    Run the param init OUTSIDE it (``jit(init, out_shardings=state_shardings(...))`` places the
    state by itself): under an active mesh, ``nn.DenseGeneral`` with several output dims unboxes
    its still-flat kernel with the full logical names and fails with a rank error.
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


class InitialState(NamedTuple):
    """What :func:`setup_state` gives a program."""
    state: Any  # unboxed, placed on ``shardings``
    shardings: Any  # NamedShardings of the unboxed state
    abstract: Any  # ``jax.eval_shape`` of the init: boxed (logical axes), no memory used
    restored: bool  # False: initialised from the seed
    extra: Any = None  # what ``restore`` returned beside the state (a data position)


def abstract_state(init_fn: Callable, mesh: jax.sharding.Mesh,
                   rules: LogicalRules) -> tuple[Any, Any]:
    """(abstract boxed state, NamedShardings of the unboxed state) of ``init_fn(rng)``, which
    builds a state whose params are flax-boxed (``nn.LogicallyPartitioned``); no memory used."""
    abstract = jax.eval_shape(init_fn, jax.random.key(0))
    return abstract, state_shardings(abstract, mesh, rules)


def setup_state(init_fn: Callable, mesh: jax.sharding.Mesh, rules: LogicalRules, *,
                seed: int = 0, restore: Callable | None = None) -> InitialState:
    """The one sharded-state setup of every program (train, finetune, evaluate, aot, the
    benchmark): ``init_fn(rng)`` (a model, and an optimizer where one trains) -> abstract state
    -> shardings -> restore, or initialise.

    ``restore(abstract, shardings) -> (state, extra) | None`` is tried first (a checkpoint;
    None: there is none); otherwise ``init_fn(jax.random.key(seed))`` runs jitted straight into
    the shardings. Call it OUTSIDE :func:`sharding_context` (see there).
    """
    abstract, shardings = abstract_state(init_fn, mesh, rules)
    restored = restore(abstract, shardings) if restore is not None else None
    if restored is not None:
        state, extra = restored
        return InitialState(state, shardings, abstract, True, extra)
    state = jax.jit(lambda rng: nn.unbox(init_fn(rng)), out_shardings=shardings)(
        jax.random.key(seed))
    return InitialState(state, shardings, abstract, False)


def placed_shapes(abstract: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct``s of the unboxed ``abstract`` state on ``shardings``: what
    ``jit(...).lower`` takes to compile for a mesh without allocating the state."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        nn.unbox(abstract), shardings)


def params_init(model) -> Callable:
    """``rng -> boxed params`` of a ``VisionLanguageModel`` (for :func:`setup_state`)."""
    from xfm_jax.models.model import init_variables
    return lambda rng: init_variables(model, rng)['params']


def param_shardings(model, mesh: jax.sharding.Mesh, rules: LogicalRules) -> tuple[Any, Any]:
    """(abstract boxed params, NamedShardings of the unboxed params) of a
    ``VisionLanguageModel``: the target of a params-only restore or initialisation."""
    return abstract_state(params_init(model), mesh, rules)


def random_params(model, mesh: jax.sharding.Mesh, rules: LogicalRules, seed: int) -> Any:
    """A model's freshly initialised params (``jax.random.key(seed)``, as a training run
    starts), created directly in their shardings."""
    return setup_state(params_init(model), mesh, rules, seed=seed).state
