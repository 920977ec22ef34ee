"""Per-stream seqio mixtures -> per-host batches -> global ``jax.Array``s, with a restorable position.

    streams = make_streams(config.data, seed=config.seed, sharding=batch_sharding, state=saved)
    batch = next(streams)            # {stream: {field: jax.Array [global batch, ...]}}
    checkpoint['data'] = streams.state()   # small JSON, every host's position

Records are addressed, never skipped over: a task's n-th record on a host is a computed index
into its split (ArrayRecord random access, ``_TaskReader``), and a stream's k-th record comes
from the task drawn for k (``_StreamReader``). ``state()`` is those positions, so a restore
costs the same at record 10**7 as at 0 and yields exactly the batches an uninterrupted run
yields: an example's augmentation and masks depend only on (seed, stream, host, position).
Each host reads its own part of every epoch and assembles ``global_batch / process_count``
examples per stream; ``make_array_from_process_local_data`` stitches the hosts' rows together.
Bad records are dropped, counted once per stream and reason (``bad_counts()``; kept conversions
apart in ``converted_counts()``) and the first few are logged with their source.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import zlib
from typing import Callable, Iterator, Union

import jax
import numpy as np
import seqio
import tensorflow as tf
from jax.experimental import multihost_utils

from xfm_jax import streams
from xfm_jax.data import augment, tasks, vocab as vocab_lib

Sharding = Union[jax.sharding.Sharding, Callable[[str, str], jax.sharding.Sharding], None]
_LOG_FIRST = 5  # bad records logged in full per stream; the rest are only counted
_CHOICE_BLOCK = 1024  # mixture choices are drawn per block of stream positions
READ_REASONS = ('undecodable',) + tasks.SKIP_REASONS[1:]  # drops found while reading


def _seed(*values: int) -> int:
    """A 62-bit seed from integers (stateless TF ops take int64 seeds)."""
    return int(np.random.SeedSequence(list(values)).generate_state(1, np.uint64)[0]
               >> np.uint64(2))


class _TaskReader:
    """One task's records on one host, addressed by the host-local position n.

    Epoch e = n // M visits the split in the order of a stateless permutation seeded by
    (run seed, task, e), the same on every host; host h of P takes permuted places h, h + P, ...
    (M = size // P per epoch: the permutation's last size % P places wait for another epoch).
    Position n's record is computed, never reached by reading the ones before it.
    """

    def __init__(self, task: seqio.Task, split: str, *, seed: int, process_index: int,
                 process_count: int):
        self.task, self.records = task, task.source.records(split)
        self.epoch_length = self.records.size // process_count
        if not self.epoch_length:
            raise ValueError(f'Task {task.name!r} split {split!r} has {self.records.size} '
                             f'records, fewer than the {process_count} processes.')
        self._seed = _seed(seed, zlib.crc32(task.name.encode()))
        self._host, self._hosts = process_index, process_count

    def dataset(self, start: int) -> tf.data.Dataset:
        """The task's stream records from position ``start`` on (endless)."""
        size, length = self.records.size, self.epoch_length

        def address(n):
            epoch = n // length
            place = (n % length) * self._hosts + self._host
            index = tf.random.experimental.index_shuffle(
                place, tf.stack([tf.constant(self._seed, tf.int64), epoch]), size - 1)
            # The caption drawn for a record depends on the record and epoch, not on the host.
            return index, tf.stack([tf.constant(self._seed, tf.int64), epoch * size + index])

        addresses = tf.data.Dataset.range(start, np.iinfo(np.int64).max).map(address)
        records = self.records.read(addresses.map(lambda index, _: index))
        ds = tasks.with_pick_seed(records, addresses.map(lambda _, seed: seed))
        return self.task.preprocess_postcache(ds, sequence_length=None)


class _StreamReader:
    """One stream on one host: per-task records -> seeded mixture -> tf augment -> tf batch ->
    numpy finalize per row.

    Stream position k draws its task from the mixture rates with a generator seeded by
    (stream seed, k // _CHOICE_BLOCK), and takes that task's next record. ``position`` and the
    per-task positions ``counts`` are the whole reading state: a restore builds the same
    datasets from there, in time independent of how far the run had read.

    tf.data batches the augmented records (the images are stacked in C++, and Python handles one
    structure per batch rather than per example); rows flagged ``skip`` are dropped here, so a
    batch of ``batch_size`` rows may take rows of the next tf.data batch, whose rest waits in
    ``_pending``. Records whose decoding fails vanish in tf.data (``ignore_errors``); the gap in
    positions names them, and replaying the choices says which task's record each one was.
    """

    def __init__(self, stream, config, mixture, *, seed, process_index, process_count,
                 position, split, specials, batch_size):
        self.stream, self.config, self.specials = stream, config, specials
        self.record = streams.get(stream)
        self._finalize = streams.resolve(self.record.finalize)  # looked up once, run per row
        self.stream_seed = _seed(seed, list(streams.STREAMS).index(stream), process_index)
        mixture = seqio.get_mixture_or_task(mixture)
        rates = np.array([mixture.get_rate(task) for task in mixture.tasks], np.float64)
        self._probabilities = rates / rates.sum()
        self._readers = [_TaskReader(task, split, seed=seed, process_index=process_index,
                                     process_count=process_count) for task in mixture.tasks]
        self.names = [task.name for task in mixture.tasks]
        # A row's ``source`` field: its task's place in the config's mixture (seqio sorts tasks).
        order = streams.sources(config, stream)
        self._source = [order.index(name) for name in self.names]
        position = position or {}
        self.position = int(position.get('position', 0))
        self.counts = [int(position.get('tasks', {}).get(name, 0)) for name in self.names]
        self.dropped = collections.Counter(position.get('dropped', {}))
        self._block = (-1, None)  # (block number, its choices): the choice replay's cache

        choices = (tf.data.Dataset.range(self.position // _CHOICE_BLOCK, np.iinfo(np.int64).max)
                   .map(lambda b: tf.ensure_shape(tf.numpy_function(
                       self._choices, [b], tf.int64, stateful=False), [_CHOICE_BLOCK]))
                   .unbatch().skip(self.position % _CHOICE_BLOCK))
        ds = tf.data.Dataset.choose_from_datasets(
            [r.dataset(n) for r, n in zip(self._readers, self.counts)], choices)
        ds = tf.data.Dataset.zip(tf.data.Dataset.range(self.position, np.iinfo(np.int64).max), ds)
        augment_fn = augment.tf_augment(stream, config, specials.pad)
        base = tf.constant(self.stream_seed, tf.int64)
        ds = ds.map(lambda k, ex: augment_fn(k, tf.stack([base, k]), ex),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.ignore_errors().batch(batch_size).prefetch(tf.data.AUTOTUNE)
        # The record path is a chain of small maps (address, parse, caption pick, tokenise,
        # tag, augment); fused, a record crosses fewer tf.data stages (the tf.data part of the
        # image_text stream: 12 % less CPU a record, BENCHMARKS.md).
        options = tf.data.Options()
        options.experimental_optimization.map_fusion = True
        self._batches = ds.with_options(options).as_numpy_iterator()
        self._pending, self._row = None, 0  # the current tf.data batch and its next row
        self._logged = 0

    def _choices(self, block) -> np.ndarray:
        """int64 [_CHOICE_BLOCK]: the task of each stream position in ``block``."""
        if len(self.names) == 1:
            return np.zeros(_CHOICE_BLOCK, np.int64)
        rng = np.random.default_rng([self.stream_seed, int(block)])
        return rng.choice(len(self.names), _CHOICE_BLOCK, p=self._probabilities).astype(np.int64)

    def _advance(self) -> tuple[int, bool]:
        """Replays position ``self.position``: (its task, whether its record is in the task's
        first epoch, i.e. seen for the first time)."""
        block, offset = divmod(self.position, _CHOICE_BLOCK)
        if self._block[0] != block:
            self._block = (block, self._choices(block))
        task = int(self._block[1][offset])
        first = self.counts[task] < self._readers[task].epoch_length
        self.counts[task] += 1
        self.position += 1
        return task, first

    def _report(self, reason: str, first: bool, detail: str) -> None:
        if not first:  # a record is counted once, on its first visit
            return
        if self._logged < _LOG_FIRST:
            self._logged += 1
            logging.warning('data: dropped a %r record in stream %r: %s', reason, self.stream,
                            detail)
        self.dropped[reason] += 1

    def _take(self, wanted: int) -> tuple[dict[str, np.ndarray], list[int], list[int]]:
        """Up to ``wanted`` usable rows of the pending tf.data batch: (batch, row numbers,
        each row's ``source``)."""
        if self._pending is None or self._row == len(self._pending['index']):
            self._pending, self._row = next(self._batches), 0
        batch, used, sources = self._pending, [], []
        while self._row < len(batch['index']) and len(used) < wanted:
            row = self._row
            self._row += 1
            index = int(batch['index'][row])
            while self.position < index:
                task, first = self._advance()
                self._report('undecodable', first,
                             f'position {self.position - 1} ({self.names[task]}) failed to '
                             'decode')
            task, first = self._advance()
            if batch['skip'][row]:
                self._report(tasks.SKIP_REASONS[batch['skip'][row]], first,
                             batch['source'][row].decode())
                continue
            used.append(row)
            sources.append(self._source[task])
        return batch, used, sources

    def snapshot(self) -> dict:
        return {'position': self.position, 'tasks': dict(zip(self.names, self.counts)),
                'dropped': dict(self.dropped)}

    def next_batch(self, size: int) -> dict[str, np.ndarray]:
        parts = []
        while sum(len(used) for _, used, _ in parts) < size:
            parts.append(self._take(size - sum(len(used) for _, used, _ in parts)))
        columns = collections.defaultdict(list)
        for batch, used, sources in parts:
            if not used:
                continue
            columns['source'].append(np.array(sources, np.int32))
            # Contiguous rows are a view of the tf.data batch; skipped rows cost one copy.
            rows = slice(used[0], used[-1] + 1) if used[-1] - used[0] + 1 == len(used) else used
            for field in self.record.passthrough:
                columns[field].append(batch[field][rows])
            for row in used:
                ex = {field: value[row] for field, value in batch.items()}
                rng = np.random.default_rng([self.stream_seed, int(ex['index'])])
                for field, value in self._finalize(ex, rng, self.config,
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
        tasks.warn_on_caption_fit(config)
        specials = vocab_lib.special_ids(tasks.make_vocabulary(config.vocab))
        self._host = process_index
        positions = self._restore(state, process_index)
        self._readers = {
            stream: _StreamReader(stream, config, mixture, seed=seed,
                                  process_index=process_index, process_count=process_count,
                                  position=positions.get(stream), split=split,
                                  specials=specials, batch_size=self._local_batch[stream])
            for stream, mixture in mixtures.items()}
        # What the builders dropped or converted, counted once per source feeding the stream.
        self._built = {stream: tasks.stream_build_counts(config, stream, split)
                       for stream in self._readers}
        self._seed, self._process_count = seed, process_count
        self._sharding = sharding
        self._local = self._snapshot()
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, config.prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, daemon=True, name='xfm-data')
        self._thread.start()

    @staticmethod
    def _restore(state: dict | None, host: int) -> dict[str, dict]:
        """{stream: this host's reader position} from a saved ``state()``."""
        if not state:
            return {}
        if 'streams' not in state:
            logging.warning('data: the saved data state predates addressable records; the '
                            'input pipeline restarts at record 0.')
            return {}
        return {stream: {'position': saved['position'][host],
                         'tasks': {t: n[host] for t, n in saved['tasks'].items()},
                         'dropped': {r: n[host] for r, n in saved['dropped'].items()}}
                for stream, saved in state['streams'].items()}

    def _snapshot(self) -> dict[str, dict]:
        return {stream: reader.snapshot() for stream, reader in self._readers.items()}

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
        batch, self._local = item
        return batch

    def state(self) -> dict:
        """Position after the last batch returned, every host's (small JSON): pass as
        ``state=`` to resume exactly there. With several processes this gathers from all of
        them, so every process must call it (as checkpoint saving does)."""
        streams = {}
        for stream, local in self._local.items():
            names, reasons = sorted(local['tasks']), READ_REASONS
            values = np.array([local['position']] + [local['tasks'][t] for t in names]
                              + [local['dropped'].get(r, 0) for r in reasons], np.int64)
            hosts = self._hosts(values).tolist()  # [process_count, values]
            column = lambda i: [row[i] for row in hosts]  # noqa: E731
            streams[stream] = {
                'position': column(0),
                'tasks': {t: column(1 + i) for i, t in enumerate(names)},
                'dropped': {r: column(1 + len(names) + i) for i, r in enumerate(reasons)}}
        return {'seed': self._seed, 'process_count': self._process_count, 'streams': streams}

    def _hosts(self, values: np.ndarray) -> np.ndarray:
        """[process_count, ...]: every process's ``values``; a process simulating one host of
        several (tests) fills only its own row."""
        if jax.process_count() > 1:
            return np.asarray(multihost_utils.process_allgather(values))
        rows = np.zeros((self._process_count,) + values.shape, values.dtype)
        rows[self._host] = values
        return rows

    def bad_counts(self) -> dict[str, dict[str, int]]:
        """{stream: {reason: count}} of records dropped so far, each counted once: at build time
        (per source) and while reading (this host's records, on their first visit)."""
        out = {}
        for stream, local in self._local.items():
            counts = collections.Counter(self._built[stream]['dropped'])
            counts.update(local['dropped'])
            out[stream] = dict(counts)
        return out

    def converted_counts(self) -> dict[str, dict[str, int]]:
        """{stream: {kind: count}} of images kept after a conversion at build time (grey, CMYK,
        alpha, palette, 16-bit, ...), each counted once per source."""
        return {stream: dict(built['converted']) for stream, built in self._built.items()}

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
