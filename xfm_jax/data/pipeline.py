"""Per-stream seqio mixtures -> per-host batches -> global ``jax.Array``s, with a restorable position.

    streams = make_streams(config.data, seed=config.seed, sharding=batch_sharding, state=saved)
    batch = next(streams)            # {stream: {field: jax.Array [global batch, ...]}}
    checkpoint['data'] = streams.state()   # JSON-serialisable

Each host reads its own shard of every source (seqio.ShardInfo(process_index, process_count)) and
assembles ``global_batch / process_count`` examples per stream; ``make_array_from_process_local_data``
stitches the hosts' rows into global arrays. An example's augmentation and masks depend only on
(seed, stream, host, example index), and ``state()`` records how many upstream records each
stream consumed, so a run resumed from ``state()`` yields exactly the batches an uninterrupted run
yields. Bad records are dropped, counted per stream and reason (``bad_counts()``; also in
``state()``) and the first few are logged with their source.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from typing import Callable, Iterator, Union

import jax
import numpy as np
import seqio
import tensorflow as tf

from xfm_jax.data import augment, tasks, vocab as vocab_lib

Sharding = Union[jax.sharding.Sharding, Callable[[str, str], jax.sharding.Sharding], None]
_LOG_FIRST = 5  # bad records logged in full per stream; the rest are only counted


class _StreamReader:
    """One stream on one host: mixture -> enumerate -> skip -> tf augment -> tf batch -> numpy
    finalize per row.

    tf.data batches the augmented records (the images are stacked in C++, and Python handles one
    structure per batch rather than per example); rows flagged ``skip`` are dropped here, so a
    batch of ``batch_size`` rows may take rows of the next tf.data batch, whose rest waits in
    ``_pending``. ``consumed`` counts records up to the last row handed out.
    """

    def __init__(self, stream, config, mixture, *, seed, process_index, process_count, consumed,
                 split, specials, batch_size):
        self.stream, self.config, self.specials = stream, config, specials
        # A 62-bit seed per (run seed, stream, host): stateless TF ops need int64 seeds.
        self.stream_seed = int(np.random.SeedSequence(
            [seed, tasks.STREAMS.index(stream), process_index]).generate_state(1, np.uint64)[0]
            >> np.uint64(2))
        ds = seqio.get_mixture_or_task(mixture).get_dataset(
            None, split=split, shuffle=True, seed=seed, num_epochs=None,
            shard_info=seqio.ShardInfo(process_index, process_count))
        # Enumerate BEFORE skipping so restored indices (and thus seeds) match the original run.
        ds = ds.enumerate().skip(consumed)
        augment_fn = augment.tf_augment(stream, config, specials.pad)
        base = tf.constant(self.stream_seed, tf.int64)
        ds = ds.map(lambda i, ex: augment_fn(i, tf.stack([base, i]), ex),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        # Records whose decoding fails (corrupt bytes) vanish here; the index gap counts them.
        ds = ds.ignore_errors().batch(batch_size).prefetch(tf.data.AUTOTUNE)
        self._batches = ds.as_numpy_iterator()
        self._pending, self._row = None, 0  # the current tf.data batch and its next row
        self.consumed = consumed
        self.bad: collections.Counter = collections.Counter()
        self._logged = 0

    def _report(self, reason: str, count: int, detail: str) -> None:
        if self._logged < _LOG_FIRST:
            self._logged += 1
            logging.warning('data: dropped %d %r record(s) in stream %r: %s', count, reason,
                            self.stream, detail)
        self.bad[reason] += count

    def _take(self, wanted: int) -> tuple[dict[str, np.ndarray], list[int]]:
        """Up to ``wanted`` usable rows of the pending tf.data batch: (batch, row numbers)."""
        if self._pending is None or self._row == len(self._pending['index']):
            self._pending, self._row = next(self._batches), 0
        batch, used = self._pending, []
        while self._row < len(batch['index']) and len(used) < wanted:
            row = self._row
            self._row += 1
            index = int(batch['index'][row])
            if index > self.consumed:
                self._report('undecodable', index - self.consumed,
                             f'records {self.consumed}..{index - 1} failed to decode')
            self.consumed = index + 1
            if batch['skip'][row]:
                self._report(tasks.SKIP_REASONS[batch['skip'][row]], 1,
                             batch['source'][row].decode())
                continue
            used.append(row)
        return batch, used

    def next_batch(self, size: int) -> dict[str, np.ndarray]:
        parts = []
        while sum(len(used) for _, used in parts) < size:
            parts.append(self._take(size - sum(len(used) for _, used in parts)))
        columns = collections.defaultdict(list)
        for batch, used in parts:
            if not used:
                continue
            # Contiguous rows are a view of the tf.data batch; skipped rows cost one copy.
            rows = slice(used[0], used[-1] + 1) if used[-1] - used[0] + 1 == len(used) else used
            for field in augment.PASSTHROUGH[self.stream]:
                columns[field].append(batch[field][rows])
            for row in used:
                ex = {field: value[row] for field, value in batch.items()}
                rng = np.random.default_rng([self.stream_seed, int(ex['index'])])
                for field, value in augment.finalize(self.stream, ex, rng, self.config,
                                                     self.specials).items():
                    columns[field].append(value[None])
        return {field: values[0] if len(values) == 1 else np.concatenate(values)
                for field, values in columns.items()}


class Streams(Iterator):
    """Iterator of ``{stream: {field: array}}`` batches; ``state()`` restores the position."""

    def __init__(self, config, *, seed: int, sharding: Sharding = None, state: dict | None = None,
                 split: str = 'train', process_index: int | None = None,
                 process_count: int | None = None):
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        if state is not None and (state['seed'], state['process_count']) != (seed, process_count):
            raise ValueError(f"Data state was saved with seed={state['seed']} and "
                             f"process_count={state['process_count']}; this run has seed={seed}, "
                             f'process_count={process_count}: the batches would differ.')
        self._local_batch = {}
        for stream, stream_config in config.streams.items():
            if stream_config.batch_size % process_count:
                raise ValueError(f'data.streams.{stream}.batch_size={stream_config.batch_size} '
                                 f'is not divisible by the {process_count} processes.')
            self._local_batch[stream] = stream_config.batch_size // process_count
        mixtures = tasks.register(config)
        specials = vocab_lib.special_ids(tasks.make_vocabulary(config.vocab))
        consumed = state['consumed'] if state else {}
        self._readers = {
            stream: _StreamReader(stream, config, mixture, seed=seed,
                                  process_index=process_index, process_count=process_count,
                                  consumed=consumed.get(stream, 0), split=split,
                                  specials=specials, batch_size=self._local_batch[stream])
            for stream, mixture in mixtures.items()}
        for stream, reader in self._readers.items():
            # Records the builders dropped count from the start; a saved state already holds them.
            reader.bad.update(state['bad'].get(stream, {}) if state else
                              tasks.stream_build_counts(config, stream, split))
        self._seed, self._process_count = seed, process_count
        self._sharding = sharding
        self._state = self._snapshot()
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, config.prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, daemon=True, name='xfm-data')
        self._thread.start()

    def _snapshot(self) -> dict:
        return {'seed': self._seed, 'process_count': self._process_count,
                'consumed': {s: r.consumed for s, r in self._readers.items()},
                'bad': {s: dict(r.bad) for s, r in self._readers.items()}}

    def _to_global(self, stream: str, batch: dict[str, np.ndarray]) -> dict:
        if self._sharding is None:
            return batch
        out = {}
        for field, local in batch.items():
            sharding = (self._sharding(stream, field) if callable(self._sharding)
                        else self._sharding)
            out[field] = jax.make_array_from_process_local_data(sharding, local)
        return out

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                batch = {stream: self._to_global(stream, reader.next_batch(self._local_batch[stream]))
                         for stream, reader in self._readers.items()}
                self._put((batch, self._snapshot()))
        except BaseException as error:  # re-raised in the consumer's thread
            self._put(error)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def __next__(self) -> dict[str, dict]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self._state = item
        return batch

    def state(self) -> dict:
        """Position after the last batch returned: pass as ``state=`` to resume exactly there."""
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self._state.items()}

    def bad_counts(self) -> dict[str, dict[str, int]]:
        """{stream: {reason: count}} of records dropped so far (for metrics)."""
        return {s: dict(c) for s, c in self._state['bad'].items()}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def make_streams(config, *, seed: int, sharding: Sharding = None, state: dict | None = None,
                 split: str = 'train', **overrides) -> Streams:
    """Batches for every stream in ``config.streams`` (see the module docstring).

    Args:
      config: data ConfigDict from ``configs/data.py``.
      seed: run seed; the same seed gives the same batches.
      sharding: the batch sharding for every field (or ``fn(stream, field) -> Sharding``);
        None returns host-local numpy arrays.
      state: a previous ``Streams.state()`` to resume from.
      overrides: ``process_index`` / ``process_count`` (tests simulating several hosts).
    """
    return Streams(config, seed=seed, sharding=sharding, state=state, split=split, **overrides)
