r"""Pre-training program: mesh -> input -> model/optimizer -> sharding -> step -> checkpoints -> loop.

    python -m xfm_jax.train --config=configs/xfm_base.py:tiny --workdir=runs/tiny \
        [--config.train.total_steps=200 ...]

Resumes from the newest checkpoint in ``--workdir/checkpoints`` when there is one: parameters,
optimizer state and step (the data position and the step's randomness follow from the step).
Saves on SIGTERM / preemption notices and at the end.
"""

from __future__ import annotations

import os
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from xfm_jax import checkpoint as checkpoint_lib
from xfm_jax import distributed, partitioning, streams, train_step as ts
from xfm_jax.models.model import build_model

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Run config (configs/*.py[:preset]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints and logs go here.')


def synthetic_batches(config, start_step: int):
    """Random batches satisfying the stream contract: a smoke-test source needing no data.
    Deterministic per step, so a resumed run sees the same batches."""
    vision, text = config.model.vision, config.model.text
    step = start_step
    while True:
        rng = np.random.default_rng([config.train.seed, step])
        batch = {}
        for stream in config.streams:
            spec = config.batch[stream]
            batch[stream] = streams.synthetic_batch(
                stream, rng, vocab_size=text.vocab_size, pad_id=text.pad_id,
                mask_id=text.mask_id, num_masked_patches=config.objectives.mim.num_masked,
                batch=spec.batch_size // jax.process_count(), text_len=spec.get('text_len', 1),
                image_size=vision.image_size, patch_size=vision.patch_size,
                region_texts=spec.get('region_texts', 1), frames=spec.get('frames', 1))
        yield batch
        step += 1


def train(config, workdir: str) -> dict:
    """Runs (or resumes) training; returns the last step's metrics as floats."""
    # ---- mesh --------------------------------------------------------------------------------
    mesh = partitioning.make_mesh(config.partitioning.mesh)
    rules = partitioning.get_rules(config.partitioning.rules)
    logging.info('mesh %s, rules %s', dict(mesh.shape), config.partitioning.rules)

    # ---- model, optimizer, sharded state -----------------------------------------------------
    model = build_model(config.model)
    tx, schedule = ts.make_optimizer(config)
    abstract = jax.eval_shape(lambda r: ts.create_train_state(model, tx, r), jax.random.key(0))
    state_sh = partitioning.state_shardings(abstract, mesh, rules)
    checkpoints = checkpoint_lib.Checkpoints(os.path.join(workdir, 'checkpoints'), config)
    restored = checkpoints.restore_latest(abstract, state_sh)
    if restored is None:
        init_fn = ts.unboxed_state_init(model, tx)
        state = jax.jit(init_fn, out_shardings=state_sh)(jax.random.key(config.train.seed))
        data_state = None
    else:
        state, data_state = restored
    start_step = int(state.step)
    logging.info('starting at step %d of %d', start_step, config.train.total_steps)

    # ---- input -------------------------------------------------------------------------------
    batch_sh = partitioning.batch_sharding(mesh)
    if 'data' in config:
        from xfm_jax.data import pipeline  # TensorFlow and seqio load only for real data
        batches = pipeline.make_streams(config.data, seed=config.train.seed, sharding=batch_sh,
                                        state=data_state or None)
        data_position = batches.state
    else:
        batches = (partitioning.shard_batch(b, mesh)
                   for b in synthetic_batches(config, start_step))
        data_position = dict

    # ---- update step -------------------------------------------------------------------------
    step = ts.make_train_step(model, config, tx, schedule, partitioning.num_batch_shards(mesh))
    step_fn = ts.jit_train_step(step, state_sh, batch_sh)
    rng = jax.random.key(config.train.seed + 1)

    # ---- metrics -----------------------------------------------------------------------------
    from clu import metric_writers
    writer = metric_writers.create_default_writer(
        os.path.join(workdir, 'tensorboard'), just_logging=jax.process_index() > 0)
    writer.write_hparams({k: v for k, v in config.train.items()})

    # ---- loop --------------------------------------------------------------------------------
    metrics = {}
    with partitioning.sharding_context(mesh, rules):
        for step in range(start_step, config.train.total_steps):
            state, metrics = step_fn(state, next(batches), rng)
            if step == start_step:  # rates and ETA exclude the compilation
                jax.block_until_ready(metrics)
                start, timed_from = time.perf_counter(), step + 1
            if (step + 1) % config.train.log_every == 0 or step + 1 == config.train.total_steps:
                metrics = jax.device_get(metrics)
                bad = [k for k, v in metrics.items() if not np.isfinite(v)]
                if bad:
                    raise FloatingPointError(f'Non-finite {bad} at step {step + 1}; the last '
                                             f'good checkpoint is kept in {checkpoints.directory}.')
                rate = (step + 1 - timed_from) / max(time.perf_counter() - start, 1e-9)
                eta = (config.train.total_steps - step - 1) / rate
                scalars = {**metrics, 'steps_per_second': rate}
                if 'data' in config:
                    scalars.update({f'bad_data/{s}': sum(c.values())
                                    for s, c in batches.bad_counts().items()})
                writer.write_scalars(step + 1, scalars)
                logging.info('step %d: loss %.4f (%.2f steps/s, ETA %.0f s)', step + 1,
                             metrics['loss'], rate, eta)
            if checkpoints.maybe_save(step + 1, state, data_position()):
                logging.warning('preempted: saved step %d, exiting', step + 1)
                break
        checkpoints.save(int(state.step), state, data_position(), force=True)
    checkpoints.wait()
    if 'data' in config:  # held-out evaluation of the final parameters (TF-based readers)
        from xfm_jax import evaluate
        results = evaluate.run_evaluators(config, state.params, mesh, rules, workdir=workdir,
                                          step=int(state.step))
        writer.write_scalars(int(state.step), {f'eval/{k}': v for k, v in results.items()})
    writer.flush()
    print(f'Checkpoints: {checkpoints.directory}\nTensorBoard: tensorboard --logdir '
          f'{os.path.join(workdir, "tensorboard")}')
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def main(argv):
    del argv
    distributed.initialize()  # before any other jax call: joins the hosts of a pod / SLURM job
    jnp.zeros(())  # initialise the backend before logging device facts
    logging.info('%d devices: %s', jax.device_count(), jax.devices()[0].device_kind)
    train(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
    flags.mark_flags_as_required(['config', 'workdir'])
    app.run(main)
