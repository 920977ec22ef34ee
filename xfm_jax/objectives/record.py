"""The record of one pre-training objective, registered once in ``OBJECTIVES``
(``xfm_jax/objectives/__init__.py``), and the per-row form of its loss."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax.numpy as jnp


class RowLosses(NamedTuple):
    """An objective's loss row by row: ``sum(weight * loss) / sum(weight)`` is its scalar loss
    (whenever ``sum(weight) > 0``), so the train step can average any subset of rows (one
    source's) the way the loss averages all of them.

    loss, weight: f32 [R]; a row of weight 0 counts nowhere (its loss is 0). Rows follow the
    batch: R is a multiple of the stream's B and row r belongs to batch row r // (R // B) (the
    pair view's B' rows, K per image for region texts; or the batch's own rows).
    """
    loss: Any
    weight: Any


def row_mean(total, weight):
    """Per row, ``total / weight``; 0 where the weight is 0 (a row with nothing to score)."""
    scored = weight > 0
    return jnp.where(scored, total / jnp.where(scored, weight, 1.0), 0.0)


@dataclasses.dataclass(frozen=True)
class Objective:
    """What the step, the encodings and the FLOPs count need to know about an objective.

    loss: ``(model, enc, batch, rng, settings) -> (loss f32 [], metrics {'<name>_<metric>':
      f32 []})``; ``model`` bound, ``settings`` this objective's section of
      ``config.objectives``.
    needs: the shared encodings it reads (``objectives/encode.py``), computed once per stream
      for all the stream's objectives.
    kinds: the stream kinds it applies to (``Stream.kind``: 'text', 'image', 'pairs'), and
    fields: batch fields a stream must hold as well (e.g. MIM's ``mim_mask``).
    flops: ``(dims, rows, settings) -> int``, forward FLOPs beyond the shared encodings
      (``xfm_jax.flops``: ``Dims`` of the model, ``Rows`` of the stream).
    model_check: ``model -> str``, why this model cannot run it ('' when it can).
    with_rows: ``loss`` that also returns its ``RowLosses``: ``(loss, metrics, rows)``, the
      same loss and metrics; the train step splits a mixed stream's loss by source with it.
      None: the objective's loss is not split.
    """
    name: str
    loss: Callable
    needs: frozenset[str]
    kinds: tuple[str, ...]
    flops: Callable
    fields: tuple[str, ...] = ()
    model_check: Callable | None = None
    with_rows: Callable | None = None

    def applies_to(self, stream) -> bool:
        """Whether the stream record ``stream`` holds what this objective reads."""
        return stream.kind in self.kinds and set(self.fields) <= set(stream.fields)
