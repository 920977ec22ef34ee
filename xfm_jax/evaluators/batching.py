"""Runs a jitted function over host rows in fixed-size batches sharded like training, with
progress and ETA (:class:`Progress`). Also the model calls the evaluators share.

Each batch is split over the mesh axes ('data', 'fsdp') (``partitioning.shard_batch``); the last
batch is padded by repeating row 0 and the padding dropped from the outputs. On several hosts
every host holds all rows and feeds its own slice of each batch; outputs are gathered to every
host.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import Any

from absl import logging
import jax
import numpy as np
from jax.experimental import multihost_utils

from xfm_jax import partitioning

Rows = Callable[[np.ndarray], dict[str, np.ndarray]]


def take(arrays: dict[str, np.ndarray]) -> Rows:
    """Rows of equally long arrays by index."""
    return lambda index: {name: array[index] for name, array in arrays.items()}


def global_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> int:
    """``batch_size`` rounded up to a multiple of the batch shards (and of the processes)."""
    shards = int(np.prod([mesh.shape[a] for a in partitioning.BATCH_AXES]))
    multiple = int(np.lcm(shards, jax.process_count()))
    return -(-batch_size // multiple) * multiple


class Progress:
    """Rows done, rate and ETA, logged every ``every_secs`` and when the last row is done.
    Our own rather than clu's ``ReportProgress``: clu's module imports TensorFlow (through its
    metric writers), and the Python API's image path must run where TensorFlow is absent."""

    def __init__(self, name: str, total: int, every_secs: float = 30.0):
        self.name, self.total, self.every_secs = name, total, every_secs
        self.started = self.logged = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if done < self.total and now - self.logged < self.every_secs:
            return
        self.logged = now
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate else float('inf')
        logging.info('%s: %d / %d rows (%.0f%%), %.1f rows/s, ETA %.0f s', self.name, done,
                     self.total, 100 * done / max(self.total, 1), rate, eta)


def map_batches(fn: Callable[[Any, dict], Any], params: Any, num_rows: int, rows: Rows, *,
                batch_size: int, mesh: jax.sharding.Mesh, rules, name: str) -> Any:
    """``fn(params, batch)`` over rows 0..num_rows-1 -> its outputs concatenated as numpy.

    Args:
      fn: jitted; every output has the batch as leading dim.
      rows: ``index array -> {field: numpy [len(index), ...]}``.
      batch_size: global batch, rounded up by :func:`global_batch_size`.
    """
    batch = global_batch_size(batch_size, mesh)
    local = batch // jax.process_count()
    mine = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
    logging.info('%s: %d rows in batches of %d', name, num_rows, batch)
    progress = Progress(name, num_rows)
    outputs = []
    with partitioning.sharding_context(mesh, rules):
        for start in range(0, num_rows, batch):
            index = np.arange(start, start + batch)
            index[index >= num_rows] = 0  # padding rows, dropped below
            out = fn(params, partitioning.shard_batch(rows(index[mine]), mesh))
            out = multihost_utils.process_allgather(out, tiled=True)
            outputs.append(jax.tree.map(lambda x: np.asarray(x)[:num_rows - start], out))
            progress(min(start + batch, num_rows))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)


# ---- model calls ---------------------------------------------------------------------------------
# ``model`` is a VisionLanguageModel; each function returns a jitted ``fn(params, batch)`` for
# map_batches, cached so that evaluators sharing a model share the compiled function.

def _pair_encoder(model, field: str, encode_method: str) -> Callable:
    """batch {field} -> (ITC embedding [B, E], tokens [B, 1+N, Dv]) through ``encode_method``."""
    def encode(module, inputs):
        tokens = getattr(module, encode_method)(inputs)
        return module.image_embedding(tokens), tokens
    return jax.jit(lambda params, b: model.apply({'params': params}, b[field], method=encode))


@functools.lru_cache(maxsize=None)
def image_encoder(model) -> Callable:
    """batch {'image'} -> (ITC embedding [B, E], image tokens [B, 1+N, Dv])."""
    return _pair_encoder(model, 'image', 'encode_image')


@functools.lru_cache(maxsize=None)
def video_encoder(model) -> Callable:
    """batch {'frames' [B, F, S, S, 3]} -> (ITC embedding [B, E], frame-pooled tokens
    [B, 1+N, Dv]): ``encode_video`` (frame embedding, mean over frames) as in pre-training."""
    return _pair_encoder(model, 'frames', 'encode_video')


@functools.lru_cache(maxsize=None)
def image_features(model) -> Callable:
    """batch {'image'} -> frozen image features [B, Dv]: vision token 0 (the mean of the normed
    patch tokens), as the probes read them."""
    return jax.jit(lambda params, b: model.apply(
        {'params': params}, b['image'], method=lambda m, x: m.encode_image(x)[:, 0]))


@functools.lru_cache(maxsize=None)
def text_encoder(model) -> Callable:
    """batch {'ids', 'mask'} -> (ITC embedding [B, E], language hidden states [B, L, Dt])."""
    def encode(module, ids, mask):
        hidden = module.encode_text(ids, mask)
        return module.text_embedding(hidden), hidden
    return jax.jit(lambda params, b: model.apply({'params': params}, b['ids'], b['mask'],
                                                 method=encode))


@functools.lru_cache(maxsize=None)
def fusion_heads(model) -> Callable:
    """batch {'text_hidden', 'mask', 'image_tokens'} -> (ITM match probability [B], box [B, 4]).

    One fusion pass serves both heads (each is cheap next to it)."""
    def heads(module, hidden, mask, image_tokens):
        fused = module.fuse(hidden, mask, image_tokens)
        match = jax.nn.softmax(module.itm_logits(fused).astype(np.float32), axis=-1)[:, 1]
        return match, module.box_prediction(fused)
    return jax.jit(lambda params, b: model.apply(
        {'params': params}, b['text_hidden'], b['mask'], b['image_tokens'], method=heads))


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """What every evaluator needs: the (unbound) model, its sharded params, the mesh."""
    model: Any
    params: Any
    mesh: jax.sharding.Mesh
    rules: Any
    config: Any  # the run config
    batch_size: int
    workdir: str | None = None  # where evaluators may write files (e.g. a gallery); None: none
    step: int = 0
    # Galleries drawn so far, {name: uint8 [H, W, 3]}: the runner writes them to TensorBoard.
    images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def map(self, fn: Callable, num_rows: int, rows: Rows, name: str) -> Any:
        return map_batches(fn, self.params, num_rows, rows, batch_size=self.batch_size,
                           mesh=self.mesh, rules=self.rules, name=name)

    def gallery(self, name: str, rows: list, **draw_args) -> None:
        """Draws ``rows`` (``gallery.draw``) to ``WORKDIR/{name}_step{step}.png`` and keeps the
        pixels in ``images[name]``; nothing without a workdir."""
        if self.workdir:
            from xfm_jax.evaluators import gallery
            self.images[name] = gallery.draw(os.path.join(self.workdir,
                                                          f'{name}_step{self.step}.png'),
                                             rows, **draw_args)
