"""How one reference tensor becomes one (or three) of our parameters, and back.

A :class:`Rule` links reference state-dict keys (PyTorch layout) to our '/'-joined param paths
(flax layout) with a ``kind`` that says how the layouts differ:

  copy        same array (embeddings, cls token, layer scale, temp, frame embedding).
  linear      nn.Linear weight [O, I] <-> kernel [I, *out] (out may be [heads, head_dim]).
  linear_out  nn.Linear weight [D, H*hd] <-> attention output kernel [H, hd, D].
  bias        [O] <-> [*out] (a bias over [heads, head_dim] is flattened in PyTorch).
  conv        Conv2d weight [O, I, kh, kw] <-> flax Conv kernel [kh, kw, I, O].
  qkv         BEiT's fused qkv weight [3*H*hd, D] <-> three kernels [D, H, hd] (q, k, v rows).
  relpos      relative position table [(2s-1)^2+3, H]; resized to our grid when s differs.

The target shape decides every reshape, so the head split needs no extra configuration, and
the source shape a rule expects is derived from it: a mismatch names both keys and both shapes.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from xfm_jax.convert import relpos

KINDS = ('copy', 'linear', 'linear_out', 'bias', 'conv', 'qkv', 'relpos')


@dataclasses.dataclass(frozen=True)
class Rule:
    kind: str
    sources: tuple[str, ...]  # reference keys
    targets: tuple[str, ...]  # our param paths

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f'Unknown rule kind {self.kind!r}; expected one of {KINDS}.')
        expected = (1, 3) if self.kind == 'qkv' else (1, 1)
        if (len(self.sources), len(self.targets)) != expected:
            raise ValueError(f'{self.kind} rule needs {expected[0]} source(s) and {expected[1]} '
                             f'target(s): {self}')


@dataclasses.dataclass(frozen=True)
class Tied:
    """``key`` is a second name of the tensor stored under ``same_as`` (e.g. an MLM decoder
    tied to the word embeddings): checked equal on import, written again on export. It belongs
    to the part of the model holding our param ``requires`` (a model without an MLM head has
    no decoder names)."""
    key: str
    same_as: str
    requires: str


def _in_axes(kind: str) -> int:
    return 2 if kind == 'linear_out' else 1


def expected_source_shape(kind: str,
                          target_shapes: list[tuple[int, ...]]) -> tuple[int, ...] | None:
    """The reference shape that maps onto ``target_shapes`` (None: any valid relpos table)."""
    shape = target_shapes[0]
    if kind in ('linear', 'linear_out'):
        n_in = _in_axes(kind)
        return (math.prod(shape[n_in:]), math.prod(shape[:n_in]))
    if kind == 'bias':
        return (math.prod(shape),)
    if kind == 'conv':
        return (shape[3], shape[2], shape[0], shape[1])
    if kind == 'qkv':
        return (3 * math.prod(shape[1:]), shape[0])
    if kind == 'relpos':
        return None
    return shape


def check_source_shape(rule: Rule, source: np.ndarray, target_shapes: list[tuple[int, ...]]):
    """Raises ValueError naming the reference key, our path and both shapes on a mismatch."""
    if rule.kind == 'relpos':
        ok = source.ndim == 2 and source.shape[1] == target_shapes[0][1]
        try:
            relpos.table_side(source.shape[0])
        except ValueError:
            ok = False
        expected = f'[(2s-1)^2+3, {target_shapes[0][1]}]'
    else:
        expected = expected_source_shape(rule.kind, target_shapes)
        ok = tuple(source.shape) == expected
    if not ok:
        raise ValueError(
            f'shape mismatch: reference {rule.sources[0]} has {tuple(source.shape)}, expected '
            f'{expected} for our {", ".join(rule.targets)} of shape '
            f'{", ".join(str(s) for s in target_shapes)} ({rule.kind})')


def to_ours(rule: Rule, source: np.ndarray,
            target_shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Reference tensor (already shape-checked) -> our arrays, one per target."""
    shape = target_shapes[0]
    if rule.kind in ('linear', 'linear_out'):
        return [source.T.reshape(shape)]
    if rule.kind == 'bias':
        return [source.reshape(shape)]
    if rule.kind == 'conv':
        return [source.transpose(2, 3, 1, 0)]
    if rule.kind == 'qkv':
        return [rows.T.reshape(s) for rows, s in zip(np.split(source, 3, axis=0), target_shapes)]
    if rule.kind == 'relpos':
        grid = (relpos.table_side(shape[0]) + 1) // 2
        return [relpos.resize_relative_position_table(source, grid)]
    return [source]


def to_reference(rule: Rule, ours: list[np.ndarray]) -> np.ndarray:
    """Our arrays -> the reference tensor (exact inverse of :func:`to_ours` at equal size)."""
    value = ours[0]
    if rule.kind in ('linear', 'linear_out'):
        n_in = _in_axes(rule.kind)
        return value.reshape(math.prod(value.shape[:n_in]), -1).T
    if rule.kind == 'bias':
        return value.reshape(-1)
    if rule.kind == 'conv':
        return value.transpose(3, 2, 0, 1)
    if rule.kind == 'qkv':
        return np.concatenate([k.reshape(k.shape[0], -1).T for k in ours], axis=0)
    return value
