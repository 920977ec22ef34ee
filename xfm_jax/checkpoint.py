"""Everything about checkpoints, in one place: the training run's Orbax manager (async saves,
preservation policy, preemption, restore onto any mesh, fallback past a damaged step, one run per
workdir), what every checkpoint says about itself (the run config and vocabulary files), where a
user's path points (:func:`locate`), and the params-only restores used by evaluation,
fine-tuning and initialisation.

Layouts (local paths and ``gs://`` alike, through ``xfm_jax.paths``):

- training workdir: ``WORKDIR/checkpoints/<step>/{state,data,run}`` (Orbax items: the train
  state, the input pipeline's JSON position, and the run description: config + vocabulary) and
  ``WORKDIR/LOCK`` while a run holds it;
- params output (``xfm_jax.convert``, ``xfm_jax.finetune``): ``DIR/params`` (Orbax tree
  ``{'params': ..., ['task': ...]}``) beside ``DIR/model_config.json`` (``format``, ``model``
  and, when written by a run, ``config``, ``vocab`` and ``task``).

Orbax finalises a step only when all of it is written (rename locally, a commit marker on GCS),
so a crash during a save leaves the previous step as the newest restorable one.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import signal
import socket
import time

from absl import logging
from etils import epath
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from xfm_jax import paths

PARAMS_CONFIG = 'model_config.json'  # beside DIR/params in a params output
PARAMS_DIR = 'params'
CHECKPOINTS_DIR = 'checkpoints'
LOCK_FILE = 'LOCK'
VOCAB_FIELDS = ('path', 'merges_path')  # the files of config.data.vocab


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message is one line naming path and
    cause."""


def root_cause(error: BaseException) -> str:
    """The innermost cause of ``error`` as 'Type: message' (Orbax and tensorstore wrap the OS
    error that matters, e.g. 'No space left on device', in several layers)."""
    while error.__cause__ is not None or (error.__context__ is not None
                                          and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    message = str(error).strip().splitlines()[0] if str(error).strip() else ''
    # tensorstore ends its messages with the OS error: keep that, not its long chain of paths
    if os_error := re.search(r"([^:]+?) \[os_error_code='?(\d+)", message):
        return f'{os_error.group(1).strip()} (errno {os_error.group(2)})'
    return f'{type(error).__name__}: {message}'[:400]


# ---- what a checkpoint says about itself -------------------------------------------------------

def describe_run(config: ml_collections.ConfigDict) -> dict:
    """The run description stored with every checkpoint: ``config`` (the whole run config as
    JSON) and ``vocab`` ({field of config.data.vocab: {'name', 'sha256', 'base64'}}: the bytes of
    the vocabulary files the run tokenised with, so the checkpoint works without them)."""
    description = {'config': json.loads(config.to_json_best_effort()), 'vocab': {}}
    vocab = config.get('data', {}).get('vocab', {}) if 'data' in config else {}
    for field in VOCAB_FIELDS:
        if not vocab.get(field):
            continue
        path = paths.resolve(vocab[field])
        if not path.exists():  # e.g. the synthetic vocab is written by the first data build
            logging.warning('vocabulary file %s (data.vocab.%s) does not exist yet; the '
                            'checkpoint will not carry it', path, field)
            continue
        data = path.read_bytes()
        description['vocab'][field] = {'name': path.name,
                                       'sha256': hashlib.sha256(data).hexdigest(),
                                       'base64': base64.b64encode(data).decode('ascii')}
    return description


def cache_dir(kind: str) -> epath.Path:
    """``XFM_CACHE_DIR/kind`` (default ``~/.cache/xfm_jax/kind``): 'vocab' holds vocabulary files
    read from checkpoints, 'converted' checkpoint files converted for ``locate``."""
    root = os.environ.get('XFM_CACHE_DIR', os.path.join(os.path.expanduser('~'), '.cache',
                                                         'xfm_jax'))
    return paths.resolve(root) / kind


def materialize_vocab(description: dict) -> dict[str, str]:
    """Writes the description's vocabulary files into the local cache (by content hash, so
    several checkpoints share them) and returns {data.vocab field: local path}."""
    out = {}
    for field, entry in description.get('vocab', {}).items():
        path = cache_dir('vocab') / entry['sha256'][:16] / entry['name']
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f'{entry["name"]}.tmp{os.getpid()}'
            tmp.write_bytes(base64.b64decode(entry['base64']))
            tmp.rename(path)  # atomic: a concurrent reader never sees half a file
        out[field] = os.fspath(path)
    return out


def stored_config(description: dict) -> ml_collections.ConfigDict:
    """The run config of a description, its vocabulary paths pointing at local copies."""
    config = ml_collections.ConfigDict(description['config'])
    if 'data' in config and 'vocab' in config.data:
        config.data.vocab.update(materialize_vocab(description))
    return config


def adopt_stored_model(config: ml_collections.ConfigDict, description: dict | None,
                       keep: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """An unlocked copy of ``config`` whose ``model`` (except the ``keep`` keys) and
    ``data.vocab`` are the checkpoint's, so a program works on any checkpoint without restating
    its model flags. ``description``: :attr:`Location.description` (None: ``config`` as is)."""
    config = ml_collections.ConfigDict(config.to_dict())
    if description is None:
        return config
    stored = stored_config(description) if 'config' in description else None
    model = stored.model if stored is not None else ml_collections.ConfigDict(
        description['model'])
    kept = {k: config.model[k] for k in keep if 'model' in config and k in config.model}
    config.model = ml_collections.ConfigDict(model.to_dict())
    config.model.update(kept)
    if stored is not None and 'data' in stored and 'data' in config:
        config.data.vocab = ml_collections.ConfigDict(stored.data.vocab.to_dict())
    return config


# ---- where a path points -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Location:
    """A params source: ``tree`` is the Orbax tree holding ``params`` (a training step's
    ``state/`` or a params output's ``params/``); ``description``: the run description
    (:func:`describe_run`) or a params output's ``model_config.json``; None for a training step
    written before checkpoints described themselves."""
    tree: epath.Path
    step: int
    description: dict | None
    kind: str  # 'train' | 'params'

    @property
    def model(self) -> dict | None:
        """The stored model config (a run's ``config.model``, or a params output's ``model``)."""
        d = self.description or {}
        return d['config']['model'] if 'config' in d else d.get('model')

    @property
    def family(self) -> str | None:
        d = self.description or {}
        return d['config']['model']['family'] if 'config' in d else d.get('format')


def _step_description(step_dir: epath.Path) -> dict | None:
    run = step_dir / 'run' / 'metadata'  # the JSON Orbax writes for the 'run' item
    return json.loads(run.read_text()) if run.exists() else None


def _finalized_steps(directory: epath.Path) -> list[int]:
    """Complete steps of an Orbax checkpoints directory, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()
                  and ocp.path.step.is_path_finalized(p))


def locate(path: paths.PathLike, fusion_from_text_layers: str = '') -> Location:
    """Where the params of ``path`` are: a training workdir (its newest complete step), its
    ``checkpoints/`` directory, one step directory, a params output (``convert``, ``finetune``)
    or its ``params/``, or a checkpoint file ``python -m xfm_jax.convert`` reads (converted once
    into ``cache_dir('converted')``; an HF BERT / RoBERTa file becomes a language tower, with
    fusion layers copied from ``fusion_from_text_layers``, e.g. '3-5', as X²-VLM starts). Raises
    FileNotFoundError naming the path and what was looked for."""
    path = paths.resolve(path)
    from xfm_jax.convert import importer  # numpy only; torch loads only for a .pth file
    if importer.is_checkpoint_file(path):
        path = importer.cached_import(path, cache_dir('converted'), fusion_from_text_layers)
    if path.name == PARAMS_DIR and (path.parent / PARAMS_CONFIG).exists():
        path = path.parent
    if (path / PARAMS_CONFIG).exists():
        return Location(path / PARAMS_DIR, 0, paths.read_json(path / PARAMS_CONFIG), 'params')
    if (path / 'state').is_dir():
        step = int(path.name) if path.name.isdigit() else 0
        return Location(path / 'state', step, _step_description(path), 'train')
    for directory in (path / CHECKPOINTS_DIR, path):
        if steps := _finalized_steps(directory):
            step_dir = directory / str(steps[-1])
            return Location(step_dir / 'state', steps[-1], _step_description(step_dir), 'train')
    raise FileNotFoundError(
        f'{path}: no checkpoint here (looked for a training workdir with {CHECKPOINTS_DIR}/<step>, '
        f'a step directory with state/, or a params output with {PARAMS_CONFIG}).')


# ---- params-only restores ----------------------------------------------------------------------

_finite_leaves = jax.jit(lambda tree: jax.tree.map(lambda x: jnp.isfinite(x).all(), tree))


def non_finite_params(params) -> list[str]:
    """'/'-joined names of the parameters holding NaN or Inf."""
    finite = flax.traverse_util.flatten_dict(jax.device_get(_finite_leaves(params)), sep='/')
    return sorted(name for name, ok in finite.items() if not ok)


def check_finite(params, source: str) -> None:
    """Raises ValueError naming the non-finite parameters of ``params`` (read from ``source``):
    a broken model must never be evaluated, fine-tuned, exported or trained on."""
    if bad := non_finite_params(params):
        raise ValueError(f'{source} holds non-finite values (NaN/Inf) in {len(bad)} '
                         f'parameter(s): {", ".join(bad[:10])}' + (' ...' if len(bad) > 10 else ''))


def _stored_shapes(tree: epath.Path, item: str) -> dict[str, tuple]:
    stored = ocp.PyTreeCheckpointer().metadata(tree).item_metadata.tree.get(item, {})
    return {k: tuple(v.shape) for k, v in
            flax.traverse_util.flatten_dict(stored, sep='/').items()}


def _restore_subtree(tree: epath.Path, item: str, target: dict) -> dict:
    """``target`` (flat {name: ShapeDtypeStruct with sharding}) read from item ``item`` of the
    Orbax tree ``tree``; nothing else stored there is read."""
    target = {item: flax.traverse_util.unflatten_dict(target, sep='/')}
    restored = ocp.PyTreeCheckpointer().restore(tree, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
    return restored[item]


def _restore_checked(location: Location, item: str, wanted: dict, shardings) -> dict:
    """Item ``item`` of ``location`` restored as ``wanted`` (flat {name: abstract array}) onto
    ``shardings`` (a tree), refused when it holds non-finite values."""
    flat_shardings = flax.traverse_util.flatten_dict(shardings, sep='/')
    restored = _restore_subtree(location.tree, item, {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=flat_shardings[k])
        for k, v in wanted.items()})
    check_finite(restored, os.fspath(location.tree))
    return restored


def restore_params(location: Location | paths.PathLike, abstract_params, shardings):
    """The ``params`` of ``location`` (a :class:`Location` or a path for :func:`locate`),
    placed on ``shardings``. Raises ValueError naming every parameter that is missing or has
    another shape, or that holds non-finite values."""
    if not isinstance(location, Location):
        location = locate(location)
    stored = _stored_shapes(location.tree, 'params')
    wanted = flax.traverse_util.flatten_dict(nn.unbox(abstract_params), sep='/')
    problems = [f'{k}: missing' for k in sorted(set(wanted) - set(stored))]
    problems += [f'{k}: stored {stored[k]}, model {tuple(v.shape)}'
                 for k, v in sorted(wanted.items()) if k in stored and stored[k] != tuple(v.shape)]
    if problems:
        raise ValueError(f'{location.tree} does not hold this model\'s params ({len(problems)} '
                         'problems; check --config matches the checkpoint):\n  '
                         + '\n  '.join(problems[:20]))
    return _restore_checked(location, 'params', wanted, shardings)


def restore_task_params(location: Location, task_name: str, abstract_task_params, shardings):
    """The task's own params stored under 'task' in a fine-tuning output of task
    ``task_name``, placed on ``shardings``; None when ``location`` is no such output or stores
    other names or shapes (the task's params then keep their initialisation)."""
    if (location.kind != 'params' or (location.description or {}).get('task') != task_name
            or not abstract_task_params):
        return None
    stored = _stored_shapes(location.tree, 'task')
    wanted = flax.traverse_util.flatten_dict(nn.unbox(abstract_task_params), sep='/')
    if stored != {k: tuple(v.shape) for k, v in wanted.items()}:
        return None
    return _restore_checked(location, 'task', wanted, shardings)


def read_params_numpy(path: Location | paths.PathLike) -> tuple[dict, dict, Location]:
    """(params as host numpy arrays, model config dict, location) of any checkpoint
    :func:`locate` accepts, with no mesh: what an export needs. Raises ValueError when the
    checkpoint states no model config or holds non-finite values."""
    location = path if isinstance(path, Location) else locate(path)
    model = location.model
    if model is None:
        raise ValueError(f'{location.tree} states no model config (a training step written '
                         'before checkpoints described themselves).')
    stored = ocp.PyTreeCheckpointer().metadata(location.tree).item_metadata.tree['params']
    target = {'params': jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), stored)}
    restored = ocp.PyTreeCheckpointer().restore(location.tree, args=ocp.args.PyTreeRestore(
        item=target, partial_restore=True,
        restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)))
    params = restored['params']
    check_finite(params, os.fspath(location.tree))
    return params, model, location


def load_matching_params(path: Location | paths.PathLike, params, exclude: str = ''):
    """``params`` with every parameter that ``path`` (see :func:`locate`) stores under the same
    name and shape replaced by the stored one, placed on the sharding of the parameter it
    replaces; ``exclude``: a regex of '/'-joined names that stay as they are.

    Returns (params, loaded names, {fresh name: why}). Logs the counts at WARNING when anything
    stays fresh or the checkpoint is of another model family.
    """
    location = path if isinstance(path, Location) else locate(path)
    stored = _stored_shapes(location.tree, 'params')
    current = flax.traverse_util.flatten_dict(params, sep='/')
    fresh = {}
    for name, value in current.items():
        if exclude and re.search(exclude, name):
            fresh[name] = 'excluded'
        elif name not in stored:
            fresh[name] = 'absent'
        elif stored[name] != value.shape:
            fresh[name] = f'stored {stored[name]}, model {value.shape}'
    loaded = sorted(set(current) - set(fresh))
    restored = _restore_subtree(location.tree, 'params', {
        name: jax.ShapeDtypeStruct(current[name].shape, current[name].dtype,
                                   sharding=current[name].sharding) for name in loaded})
    check_finite(restored, os.fspath(location.tree))
    current.update(flax.traverse_util.flatten_dict(restored, sep='/'))
    unused = len(set(stored) - set(current))
    logging.info('init_from %s: %d parameters loaded: %s', location.tree, len(loaded),
                 ', '.join(loaded))
    logging.info('init_from %s: %d parameters fresh: %s', location.tree, len(fresh),
                 ', '.join(f'{k} ({why})' for k, why in sorted(fresh.items())))
    unmatched = {k: why for k, why in fresh.items() if why != 'excluded'}
    if unmatched or unused:
        logging.warning('init_from %s: %d of %d parameters loaded, %d unmatched (fresh), %d '
                        'stored parameters unused (names in the INFO log)', location.tree,
                        len(loaded), len(current), len(unmatched), unused)
    return flax.traverse_util.unflatten_dict(current, sep='/'), loaded, fresh


def save_params(directory: paths.PathLike, tree: dict, description: dict) -> epath.Path:
    """Writes a params output: ``directory/params`` (Orbax; every process writes its own shards
    of ``tree`` = {'params': ..., ['task': ...]}) and ``directory/model_config.json``
    (``description``: at least ``format`` and ``model``). Returns ``directory/params``."""
    directory = paths.resolve(directory)
    target = directory / PARAMS_DIR
    try:
        ocp.PyTreeCheckpointer().save(target, tree, force=True)
        if jax.process_index() == 0:
            paths.write_json(directory / PARAMS_CONFIG, description)
    except Exception as e:  # one line naming path and cause, not the library's traceback
        raise CheckpointError(f'saving params to {target} failed: {root_cause(e)}') from e
    return target


# ---- one run per workdir -----------------------------------------------------------------------

class WorkdirLock:
    """``WORKDIR/LOCK`` holds {host, pid, time} of the run using the workdir; process 0 takes it.

    A second run refuses, naming the holder. A lock is stale (taken over, with a warning) when
    its holder is a dead process on this host, or when its heartbeat (rewritten at every
    :meth:`heartbeat`) is older than ``stale_seconds`` (a holder on another host).
    """

    def __init__(self, workdir: epath.Path, stale_seconds: float):
        self.path = workdir / LOCK_FILE
        self.stale_seconds = stale_seconds
        self.me = {'host': socket.gethostname(), 'pid': os.getpid()}
        self.held = False

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError, ValueError):
            return None

    def _stale(self, holder: dict) -> str | None:
        """Why ``holder`` no longer holds the lock, or None when it may still."""
        if holder['host'] == self.me['host']:
            try:
                os.kill(int(holder['pid']), 0)
            except ProcessLookupError:
                return f'process {holder["pid"]} on {holder["host"]} has ended'
            except PermissionError:
                pass
            return None
        age = time.time() - float(holder.get('time', 0))
        if age > self.stale_seconds:
            return f'no heartbeat from {holder["host"]} for {age:.0f} s'
        return None

    def acquire(self) -> None:
        if jax.process_index() != 0:
            return
        holder = self._holder()
        if holder is not None and (holder['host'], holder['pid']) != (self.me['host'],
                                                                      self.me['pid']):
            why = self._stale(holder)
            if why is None:
                raise CheckpointError(
                    f'{self.path.parent} is in use by process {holder["pid"]} on '
                    f'{holder["host"]} (lock {self.path}); use another --workdir, or stop that '
                    f'run (a lock whose holder died is taken over automatically).')
            logging.warning('taking over the stale lock %s: %s', self.path, why)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.heartbeat()
        if (self._holder() or {}).get('pid') != self.me['pid']:  # lost a race with another run
            raise CheckpointError(f'{self.path.parent} was locked by another run just now '
                                  f'({self._holder()}).')
        self.held = True

    def heartbeat(self) -> None:
        if jax.process_index() == 0:
            self.path.write_text(json.dumps({**self.me, 'time': time.time()}))

    def release(self) -> None:
        if self.held and (self._holder() or {}).get('pid') == self.me['pid']:
            self.path.unlink(missing_ok=True)
        self.held = False


# ---- the training run's checkpoints ------------------------------------------------------------

class Checkpoints:
    """Policy layer over ``ocp.CheckpointManager`` configured by ``config.checkpoint``, in
    ``WORKDIR/checkpoints``. Saves the train state, the data position and the run description
    (:func:`describe_run`) at every checkpoint.

    Preemption: a single process catches SIGTERM itself. Several processes must all save the
    same step (a save is collective), but the signal may reach them at different steps; there
    jax's preemption service (started by ``jax.distributed.initialize``) owns SIGTERM and agrees
    on a step every host reaches (``multihost_utils.reached_preemption_sync_point``), so no
    Python handler may replace its own.
    """

    def __init__(self, directory: paths.PathLike, config: ml_collections.ConfigDict):
        settings = config.checkpoint
        if int(settings.keep) < 1:
            raise ValueError(f'checkpoint.keep={settings.keep} must be >= 1 (the newest K '
                             'checkpoints are kept; 0 would delete every one).')
        self.directory = paths.resolve(directory)
        self._config = config
        self._description = None  # at the first save: the data build may write the vocab file
        policies = [ocp.checkpoint_managers.LatestN(n=int(settings.keep))]
        if settings.keep_every:
            policies.append(ocp.checkpoint_managers.EveryNSteps(
                interval_steps=int(settings.keep_every)))
        try:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    save_interval_steps=settings.every_steps,
                    preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
                    enable_async_checkpointing=settings.async_save,
                    cleanup_tmp_directories=True,  # the remains of a save cut short by a crash
                ))
        except Exception as e:
            raise CheckpointError(f'cannot use {self.directory} for checkpoints: '
                                  f'{root_cause(e)}') from e
        self._sigterm = False
        if settings.save_on_sigterm and jax.process_count() == 1:
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        del signum, frame
        logging.warning('SIGTERM: saving at the end of this step, then exiting.')
        self._sigterm = True

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore_latest(self, abstract_state, shardings):
        """(state, data_state) of the newest complete, readable checkpoint on ``shardings``, or
        None when there is none. A step that cannot be read (a truncated or missing file, an
        unreadable data state) is reported by name, moved aside as ``damaged_<step>`` and the
        next older step is tried."""
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                return self.restore(step, abstract_state, shardings)
            except Exception as e:  # any unreadable part makes the step unusable
                logging.error('checkpoint step %d in %s is damaged (%s); falling back to the '
                              'previous step', step, self.directory, root_cause(e))
                self._quarantine(step)
        return None

    def _quarantine(self, step: int):
        if jax.process_index() == 0:
            damaged = self.directory / f'damaged_{step}_{int(time.time())}'
            (self.directory / str(step)).rename(damaged)
            logging.error('moved the damaged step to %s', damaged)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f'quarantine step {step}')
        self._manager.reload()

    def restore(self, step: int, abstract_state, shardings):
        """Restores onto ``shardings``, whatever mesh the checkpoint was written from."""
        target = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            nn.unbox(abstract_state), shardings)
        logging.info('restoring step %d from %s', step, self.directory)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        if not isinstance(restored.data, dict):
            raise ValueError(f'data state of step {step} is {type(restored.data).__name__}, '
                             'not a JSON object')
        return restored.state, restored.data

    def preempted(self, step: int) -> bool:
        """Whether to save at ``step`` and stop. Call it at every step, on every process (the
        multi-process agreement counts the calls)."""
        return self._manager.reached_preemption(step) or self._sigterm

    def due(self, step: int) -> bool:
        """Whether the save interval asks for a checkpoint at ``step``."""
        return self._manager.should_save(step)

    def save(self, step: int, state, data_state=None, force: bool = False):
        """``data_state``: the input pipeline's JSON position, saved beside the arrays. Raises
        CheckpointError (one line: path and cause) when the save fails."""
        if self._manager.latest_step() == step:
            return
        if self._description is None:
            self._description = describe_run(self._config)
        try:
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state or {}),
                run=ocp.args.JsonSave(self._description)), force=force)
        except Exception as e:
            raise CheckpointError(f'saving step {step} to {self.directory} failed: '
                                  f'{root_cause(e)}') from e

    def wait(self):
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # an async save's failure surfaces here
            raise CheckpointError(f'saving a checkpoint to {self.directory} failed: '
                                  f'{root_cause(e)}') from e

    def close(self):
        self._manager.close()
