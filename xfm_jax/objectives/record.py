"""The record of one pre-training objective, registered once in ``OBJECTIVES``
(``xfm_jax/objectives/__init__.py``)."""

from __future__ import annotations

import dataclasses
from typing import Callable


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
    """
    name: str
    loss: Callable
    needs: frozenset[str]
    kinds: tuple[str, ...]
    flops: Callable
    fields: tuple[str, ...] = ()
    model_check: Callable | None = None

    def applies_to(self, stream) -> bool:
        """Whether the stream record ``stream`` holds what this objective reads."""
        return stream.kind in self.kinds and set(self.fields) <= set(stream.fields)
