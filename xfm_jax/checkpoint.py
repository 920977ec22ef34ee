"""Orbax checkpoints of the train state: periodic async saves, keep policy, preemption, restore
onto any mesh (the target tree carries the new shardings), and initialisation from the
parameters of another checkpoint.

Orbax writes each step to a temporary directory and renames it when complete, so a crash during
a save leaves the previous complete step as the newest restorable one.
"""

from __future__ import annotations

import os
import re
import signal

from absl import logging
import flax
import flax.linen as nn
import jax
import ml_collections
import orbax.checkpoint as ocp


class Checkpoints:
    """Thin policy layer over ``ocp.CheckpointManager`` configured by ``config.checkpoint``.

    Preemption: a single process catches SIGTERM itself. Several processes must all save the
    same step (a save is collective), but the signal may reach them at different steps; there
    jax's preemption service (started by ``jax.distributed.initialize``) owns SIGTERM and agrees
    on a step every host reaches (``multihost_utils.reached_preemption_sync_point``), so no
    Python handler may replace its own.
    """

    def __init__(self, directory: str, config: ml_collections.ConfigDict):
        settings = config.checkpoint
        self.directory = directory
        self._manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=settings.every_steps,
                max_to_keep=settings.keep,
                keep_period=settings.keep_every or None,
                enable_async_checkpointing=settings.async_save,
                cleanup_tmp_directories=True,  # the remains of a save cut short by a crash
            ))
        self._sigterm = False
        if settings.save_on_sigterm and jax.process_count() == 1:
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        del signum, frame
        logging.warning('SIGTERM: saving at the end of this step, then exiting.')
        self._sigterm = True

    def restore_latest(self, abstract_state, shardings):
        """(state, data_state) of the newest complete checkpoint on ``shardings``, or None."""
        step = self._manager.latest_step()
        if step is None:
            return None
        return self.restore(step, abstract_state, shardings)

    def restore(self, step: int, abstract_state, shardings):
        """Restores onto ``shardings``, whatever mesh the checkpoint was written from."""
        target = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            nn.unbox(abstract_state), shardings)
        logging.info('restoring step %d from %s', step, self.directory)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        return restored.state, restored.data

    def preempted(self, step: int) -> bool:
        """Whether to save at ``step`` and stop. Call it at every step, on every process (the
        multi-process agreement counts the calls)."""
        return self._manager.reached_preemption(step) or self._sigterm

    def due(self, step: int) -> bool:
        """Whether the save interval asks for a checkpoint at ``step``."""
        return self._manager.should_save(step)

    def save(self, step: int, state, data_state=None, force: bool = False):
        """``data_state``: the input pipeline's JSON position, saved beside the arrays."""
        if self._manager.latest_step() == step:
            return
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state or {})),
            force=force)

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.close()


# ---- initialisation from another checkpoint ----------------------------------------------------

CONVERTED_CONFIG = 'model_config.json'  # beside DIR/params in an output of xfm_jax.convert


def params_tree_directory(path: str) -> str:
    """The Orbax tree holding ``params`` in ``path``: a converted checkpoint directory (or its
    ``params/``), or one step directory of a training run (its ``state/``)."""
    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, CONVERTED_CONFIG)):
        return os.path.join(path, 'params')
    if os.path.basename(path) == 'params' and os.path.isfile(
            os.path.join(os.path.dirname(path), CONVERTED_CONFIG)):
        return path
    if os.path.isdir(os.path.join(path, 'state')):
        return os.path.join(path, 'state')
    raise FileNotFoundError(
        f'{path} is neither a converted checkpoint (a directory with {CONVERTED_CONFIG}, from '
        '`python -m xfm_jax.convert`) nor a step directory of a training run (with state/).')


def load_matching_params(path: str, params, exclude: str = ''):
    """``params`` with every parameter that ``path`` (see :func:`params_tree_directory`) stores
    under the same name and shape replaced by the stored one, placed on the sharding of the
    parameter it replaces; ``exclude``: a regex of '/'-joined names that stay as they are.

    Returns (params, loaded names, {fresh name: why}).
    """
    directory = params_tree_directory(path)
    checkpointer = ocp.PyTreeCheckpointer()
    stored = checkpointer.metadata(directory).item_metadata.tree.get('params', {})
    stored = flax.traverse_util.flatten_dict(stored, sep='/')
    current = flax.traverse_util.flatten_dict(params, sep='/')
    fresh = {}
    for name, value in current.items():
        if exclude and re.search(exclude, name):
            fresh[name] = 'excluded'
        elif name not in stored:
            fresh[name] = 'absent'
        elif tuple(stored[name].shape) != value.shape:
            fresh[name] = f'stored {tuple(stored[name].shape)}, model {value.shape}'
    loaded = sorted(set(current) - set(fresh))
    target = {'params': flax.traverse_util.unflatten_dict(
        {name: jax.ShapeDtypeStruct(current[name].shape, current[name].dtype,
                                    sharding=current[name].sharding) for name in loaded},
        sep='/')}
    restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
    current.update(flax.traverse_util.flatten_dict(restored['params'], sep='/'))
    logging.info('init_from %s: %d parameters loaded: %s', path, len(loaded), ', '.join(loaded))
    logging.info('init_from %s: %d parameters fresh: %s', path, len(fresh),
                 ', '.join(f'{k} ({why})' for k, why in sorted(fresh.items())))
    return flax.traverse_util.unflatten_dict(current, sep='/'), loaded, fresh
