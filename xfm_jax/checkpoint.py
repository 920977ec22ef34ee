"""Orbax checkpoints of the train state: periodic async saves, keep policy, preemption, and
restore onto any mesh (the target tree carries the new shardings).

Orbax writes each step to a temporary directory and renames it when complete, so a crash during
a save leaves the previous complete step as the newest restorable one.
"""

from __future__ import annotations

import signal

from absl import logging
import jax
import flax.linen as nn
import ml_collections
import orbax.checkpoint as ocp


class Checkpoints:
    """Thin policy layer over ``ocp.CheckpointManager`` configured by ``config.checkpoint``."""

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
            ))
        self._sigterm = False
        if settings.save_on_sigterm:
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        del signum, frame
        logging.warning('SIGTERM: saving at the end of this step, then exiting.')
        self._sigterm = True

    @property
    def stop_requested(self) -> bool:
        return self._sigterm

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

    def maybe_save(self, step: int, state, data_state=None) -> bool:
        """Saves on the interval, on a preemption notice or after SIGTERM. Returns True when the
        run should stop (preemption)."""
        preempted = self._manager.reached_preemption(step) or self._sigterm
        if preempted or self._manager.should_save(step):
            self.save(step, state, data_state, force=preempted)
        return preempted

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

