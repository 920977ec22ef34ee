"""Pre-training objectives (docs/design.md §7): pure functions over a stream's shared encodings.

Use, inside the loss function given to ``jax.grad`` (this is what ``xfm_jax.train_step`` does)::

    bound = model.bind({'params': params}, rngs={'dropout': dropout_rng})
    enc = objectives.encode_stream(bound, stream, batch[stream], train=True,
                                   objectives=('itc', 'itm'))      # computed once per stream
    for name in ('itc', 'itm'):
        loss, metrics = objectives.get(name, stream)(
            bound, enc, batch[stream], rng_for_name, config.objectives[name])

API:
  ``encode_stream(model, stream, batch, *, train, objectives=None) -> enc`` (``encode.py``): the
    flat pair view (``B'`` rows; region ``B*K``) and the encodings the named objectives read,
    each computed once. Its docstring lists every key and shape.
  ``OBJECTIVES[name]`` / ``get(name, stream)``: ``fn(model, enc, batch, rng, settings) ->
    (loss f32 [], metrics {'<name>_<metric>': f32 []})``; ``model`` is bound, ``settings`` is
    that objective's section of ``configs.common.objectives_config()``, ``rng`` is only drawn
    from by ITM (negatives). The loss itself is not repeated in the metrics.
  ``STREAM_OBJECTIVES``: which objectives apply to which stream; ``get`` and ``encode_stream``
    raise a ValueError naming both when a pair does not apply.

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

from typing import Callable

from xfm_jax.objectives import box, imlm, itc, itm, mim, mlm
from xfm_jax.objectives.encode import STREAM_OBJECTIVES, check_objectives, encode_stream

OBJECTIVES: dict[str, Callable] = {
    'mlm': mlm.mlm, 'itc': itc.itc, 'itm': itm.itm, 'imlm': imlm.imlm, 'box': box.box,
    'mim': mim.mim,
}

def get(name: str, stream: str) -> Callable:
    """The objective ``name`` after checking that it applies to ``stream``."""
    check_objectives(stream, (name,))
    return OBJECTIVES[name]


__all__ = ['OBJECTIVES', 'STREAM_OBJECTIVES', 'check_objectives', 'encode_stream', 'get']
