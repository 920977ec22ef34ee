"""X-FM / X²-VLM pre-training optimiser (docs/design.md §10): AdamW with a decay mask, per-parameter
learning-rate multipliers, warmup + decay schedule, global-norm clipping and the temperature clamp.

The update, per leaf ``p`` with lr multiplier ``mult`` and decay flag ``d`` (PyTorch ``AdamW``
with param groups, which is what the reference X-VLM/X-FM code runs)::

    g      = clip_by_global_norm(grads, grad_clip_norm)
    adam   = m_hat / (sqrt(v_hat) + eps)                  # betas (0.9, 0.98), eps 1e-8
    update = -lr(step) * mult * (adam + weight_decay * d * p)

Every parameter group shares ONE schedule ``lr(step)``; the multiplier ``mult`` scales the final
update of its leaves. That equals a PyTorch param group with ``lr = mult * base_lr`` (the decay term
is scaled too, as PyTorch's decoupled decay multiplies by the group lr), yet keeps a single
optax chain and a single schedule to log.

Gradient accumulation: the chain keeps no state that depends on how many micro-batches went into
a gradient, so a train step may average micro-batch gradients itself (``lax.scan``) and call
``tx.update`` once, or wrap the chain in ``optax.MultiSteps``; either way ``schedule`` counts
optimiser updates, not micro-batches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

# Leaf names containing 'bias' are not decayed: bias, q_bias, v_bias and also
# relative_position_bias_table, matching the reference's substring test ``'bias' in name``.
_NO_DECAY_SUBSTRING = 'bias'
# Flax norm layers (LayerNorm, RMSNorm, ...) call their gain 'scale'; nothing else here does.
_NORM_GAIN_NAME = 'scale'


def _path_names(path: Sequence[Any]) -> tuple[str, ...]:
    """Names of a param path's dict keys; skips the `.value` step into flax partitioning boxes."""
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def _path_str(path: Sequence[Any]) -> str:
    return '/'.join(_path_names(path))


def decay_mask(params: Any) -> Any:
    """True for leaves that get weight decay, False for biases and normalisation parameters.

    A leaf is exempt when
      * its name contains 'bias' (``bias``, ``q_bias``, ``v_bias``,
        ``relative_position_bias_table``),
      * its name is 'scale' (the gain of flax LayerNorm/RMSNorm), or
      * any enclosing module's name contains 'norm' (case-insensitive), for custom norm layers.
    This is the reference X-VLM grouping (``no_decay = {'bias', 'LayerNorm.weight', 'norm1.weight',
    ...}``); everything else is decayed, including embeddings, ``cls_token``, ``mask_token``,
    ``temp`` and the layer-scale vectors ``gamma_1``/``gamma_2``.

    Works on plain and on flax-boxed (``nn.LogicallyPartitioned``) param trees; the result has the
    params' tree structure, so it can also be used as an ``optax.masked`` mask.
    """
    def decays(path, _):
        *modules, leaf = _path_names(path)
        exempt = (_NO_DECAY_SUBSTRING in leaf or leaf == _NORM_GAIN_NAME
                  or any('norm' in m.lower() for m in modules))
        return not exempt

    return jax.tree_util.tree_map_with_path(decays, params)


def parse_lr_multipliers(spec: str) -> list[tuple[re.Pattern, float]]:
    """Parses ``'regex=mult,regex=mult,...'`` (the config's string form) into ordered rules.

    A string keeps the order (first matching pattern wins) and is easy to override on the command
    line, e.g. ``--config.optimizer.lr_multipliers='cross_attention=2,itm_head=2'``. Regexes must
    not contain ','; '' means no multipliers.
    """
    rules = []
    for item in filter(None, (s.strip() for s in spec.split(','))):
        pattern, sep, mult = item.rpartition('=')
        if not sep or not pattern:
            raise ValueError(f"lr_multipliers item {item!r} is not of the form 'regex=multiplier' "
                             f'(in {spec!r})')
        rules.append((re.compile(pattern), float(mult)))
    return rules


def lr_multiplier_tree(params: Any, rules: Sequence[tuple[re.Pattern, float]]) -> Any:
    """Per-leaf learning-rate multiplier: the first rule whose regex `re.search`es the leaf's
    '/'-joined path (e.g. ``'fusion/layer_0/cross_attention/query/kernel'``) wins; default 1."""
    def multiplier(path, _):
        name = _path_str(path)
        return next((mult for pattern, mult in rules if pattern.search(name)), 1.0)

    return jax.tree_util.tree_map_with_path(multiplier, params)


def scale_by_lr_multipliers(
        rules: Sequence[tuple[re.Pattern, float]]) -> optax.GradientTransformation:
    """Scales each update leaf by its path's multiplier; stateless, as paths fix multipliers."""
    def update_fn(updates, state, params=None):
        del params
        multipliers = lr_multiplier_tree(updates, rules)
        return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate`` over ``warmup_steps``, then 'linear' or 'cosine'
    decay to 0 at ``total_steps``. Step 0 has lr 0 (as the reference's LambdaLR)."""
    peak, warmup = config.learning_rate, config.warmup_steps
    if not 0 <= warmup < total_steps:
        raise ValueError(f'need 0 <= warmup_steps < total_steps, got warmup_steps={warmup}, '
                         f'total_steps={total_steps}')
    if config.decay == 'linear':
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup),
             optax.linear_schedule(peak, 0.0, total_steps - warmup)],
            boundaries=[warmup])
    if config.decay == 'cosine':
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total_steps, end_value=0.0)
    raise ValueError(f"optimizer.decay must be 'linear' or 'cosine', got {config.decay!r}")


def make_optimizer(
        config: ml_collections.ConfigDict, total_steps: int, *,
        updates_per_step: int = 1) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds the AdamW chain described in the module docstring from ``optimizer_config()``.

    Returns ``(tx, schedule)``; ``schedule(train_step)`` is the base lr (multiplier 1) for logging.
    ``total_steps`` counts train steps. A train step may call ``tx.update`` ``updates_per_step``
    times (one update per stream group, as the reference schedule does); the lr then stays
    constant within a train step, as the reference ticks its scheduler once per iteration, while
    Adam's bias correction counts every update. ``tx.update`` needs ``params`` (for weight decay).
    ``grad_clip_norm`` of 0/None disables clipping.
    """
    if updates_per_step < 1:
        raise ValueError(f'updates_per_step must be >= 1, got {updates_per_step}')
    schedule = make_schedule(config, total_steps)
    tx = optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm) if config.grad_clip_norm
        else optax.identity(),
        optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps),
        optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
        optax.scale_by_learning_rate(lambda update: schedule(update // updates_per_step)),
        scale_by_lr_multipliers(parse_lr_multipliers(config.lr_multipliers)),
    )
    return tx, schedule


def clamp_temperature(params: Any, lo: float, hi: float) -> Any:
    """Returns ``params`` with the top-level ``temp`` leaf clipped to ``[lo, hi]``.

    The ITC temperature is clamped before every step (docs/design.md §6; the reference does it at
    the start of the forward pass), so call this on the params at the top of the train step,
    before the loss. Expects unboxed params (as the train step holds them).
    """
    if 'temp' not in params:
        raise KeyError(f"clamp_temperature: no top-level 'temp' in params (keys: {list(params)})")
    return {**params, 'temp': jnp.clip(params['temp'], lo, hi)}
