"""Pre-training objectives (docs/design.md §7): pure functions over a stream's shared encodings.

Use, inside the loss function given to ``jax.grad`` (this is what ``xfm_jax.train_step`` does)::

    bound = model.bind({'params': params}, rngs={'dropout': dropout_rng})
    enc = objectives.encode_stream(bound, stream, batch[stream], train=True,
                                   objectives=('itc', 'itm'))      # computed once per stream
    for name in ('itc', 'itm'):
        loss, metrics = objectives.get(name, stream)(
            bound, enc, batch[stream], rng_for_name, config.objectives[name])

API:
  ``encode_stream(model, stream, batch, *, train, objectives=None) -> enc``: the flat pair view
    (``B'`` rows; region ``B*K``) and the shared encodings the named objectives read, each
    computed once (``encode.py``; its docstring lists every key and shape).
  ``OBJECTIVES[name]``: the objective's record (``record.Objective``: loss, the encodings it
    needs, the streams it applies to, its FLOPs); ``get(name, stream)`` its loss function
    ``fn(model, enc, batch, rng, settings) -> (loss f32 [], metrics {'<name>_<metric>': f32
    []})``; ``model`` is bound, ``settings`` is that objective's section of
    ``configs.common.objectives_config()``, ``rng`` is only drawn from by ITM (negatives). The
    loss itself is not repeated in the metrics. ``OBJECTIVES[name].with_rows``: the same
    function returning ``(loss, metrics, RowLosses)`` as well, the loss row by row with weights
    whose weighted mean is the loss (``record.RowLosses``); a row is a pair-view row (a text)
    for every objective but MIM, whose row is an image.
  ``stream_objectives(stream)``: the objectives that apply to a stream; ``get`` and
    ``encode_stream`` raise a ValueError naming both when a pair does not apply.

Adding an objective: a file here with its loss, FLOPs and ``OBJECTIVE = Objective(...)``, and
its entry in ``OBJECTIVES`` below.

Objectives:
  mlm   text      CE at masked positions, language encoder's MLM head.
  itc   pairs     1/2 [CE(v t^T / temp, diag) + CE(transpose)] over the batch seen (the global
                  batch under jit); ``itc.soft_targets``: equal image ids are all positives.
  itm   pairs     match CE over B' positives + 2B' hard negatives drawn by similarity within
                  ``itm.negative_groups`` contiguous groups (set it to the number of batch shards).
  imlm  pairs     re-encode the masked text, fuse with the image, fusion MLM head.
  box   region    fusion over (full image, region text) -> L1 + (1 - GIoU); box_valid 0 excluded.
  mim   image,    MSE(masked pass, stop_gradient(unmasked pass)) on masked patches + token 0.
        image_text
X-FM's stop-gradient on the language output is ``model.fuse``'s (``model.stop_gradient_text``).
The temperature is used as given: the train step clamps it to ``model.temp_range``.
"""

from __future__ import annotations

from typing import Callable, Sequence

from xfm_jax import streams as streams_lib
from xfm_jax.objectives import box, encode, imlm, itc, itm, mim, mlm
from xfm_jax.objectives.record import Objective, RowLosses

OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    mlm.OBJECTIVE, itc.OBJECTIVE, itm.OBJECTIVE, imlm.OBJECTIVE, box.OBJECTIVE, mim.OBJECTIVE)}


def stream_objectives(stream: str) -> tuple[str, ...]:
    """The objectives that apply to ``stream`` (its kind and fields hold what they read)."""
    record = streams_lib.get(stream)
    return tuple(name for name, o in OBJECTIVES.items() if o.applies_to(record))


def _unsupported(objective: Objective, model) -> str:
    """Why ``model`` cannot run ``objective`` ('' when it can)."""
    return objective.model_check(model) if objective.model_check else ''


def check_objectives(stream: str, objectives: Sequence[str], model=None) -> None:
    """Raises a ValueError naming the stream and objective when one does not apply.

    ``model`` (optional) adds the objectives' checks of the model (MIM needs a mask token).
    """
    record = streams_lib.get(stream)
    for name in objectives:
        if name not in OBJECTIVES:
            raise ValueError(f'Unknown objective {name!r} for stream {stream!r}; expected one '
                             f'of {sorted(OBJECTIVES)}.')
        objective = OBJECTIVES[name]
        if not objective.applies_to(record):
            raise ValueError(
                f'Objective {name!r} does not apply to stream {stream!r}, which takes '
                f'{stream_objectives(stream)} (objective kinds {objective.kinds}, fields '
                f'{objective.fields}; stream kind {record.kind!r}).')
        reason = _unsupported(objective, model) if model is not None else ''
        if reason:
            raise ValueError(f'Objective {name} on stream {stream!r} needs {reason}.')


def encode_stream(model, stream: str, batch: dict, *, train: bool,
                  objectives: Sequence[str] | None = None) -> dict:
    """Encodes one stream's batch for the given objectives (``encode.encode``); ``None`` means
    every objective of the stream that the model supports. Only what they read is computed."""
    if objectives is None:
        objectives = [name for name in stream_objectives(stream)
                      if not _unsupported(OBJECTIVES[name], model)]
    check_objectives(stream, objectives, model)
    needs = frozenset().union(*(OBJECTIVES[name].needs for name in objectives))
    return encode.encode(model, streams_lib.get(stream), batch, train=train, needs=needs)


def get(name: str, stream: str) -> Callable:
    """The loss function of objective ``name`` after checking that it applies to ``stream``."""
    check_objectives(stream, (name,))
    return OBJECTIVES[name].loss


__all__ = ['OBJECTIVES', 'Objective', 'RowLosses', 'check_objectives', 'encode_stream', 'get',
           'stream_objectives']
