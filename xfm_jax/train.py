r"""Pre-training program: mesh -> model/optimizer -> sharded state -> input -> step -> metrics ->
loop (with checkpoints). Usage, config overrides, resuming and metrics: docs/training.md.

    python -m xfm_jax.train --config=configs/xfm_base.py:tiny --workdir=runs/tiny \
        [--config.train.total_steps=200 ...]

Resumes from the newest checkpoint in ``--workdir/checkpoints`` when there is one: parameters,
optimizer state and step (the data position and the step's randomness follow from the step).
A fresh run may take parameters from another checkpoint (``config.train.init_from``).
Saves on SIGTERM / preemption notices (every host at the same step) and at the end.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from xfm_jax import checkpoint as checkpoint_lib
from xfm_jax import distributed, flops, partitioning, streams, train_step as ts
from xfm_jax.models.model import build_model

METRICS_FILE = 'metrics.json'  # the last step's metrics, written by process 0 at the end


def synthetic_batches(config, start_step: int):
    """Random batches satisfying the stream contract: a smoke-test source needing no data.

    Deterministic per step, so a resumed run sees the same batches. Every process draws the
    global batch and keeps its own block of rows, so a run gets the same batches whatever its
    number of processes (``make_array_from_process_local_data`` puts process p's block on its
    devices, which hold rows p*B/P.. of the batch axis in a mesh made by ``make_mesh``).
    """
    vision, text = config.model.vision, config.model.text
    step = start_step
    while True:
        rng = np.random.default_rng([config.train.seed, step])
        batch = {}
        for stream in config.streams:
            spec = config.batch[stream]
            local = spec.batch_size // jax.process_count()
            rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
            batch[stream] = {k: v[rows] for k, v in streams.synthetic_batch(
                stream, rng, vocab_size=text.vocab_size, pad_id=text.pad_id,
                mask_id=text.mask_id, num_masked_patches=config.objectives.mim.num_masked,
                batch=spec.batch_size, text_len=spec.get('text_len', 1),
                image_size=vision.image_size, patch_size=vision.patch_size,
                region_texts=spec.get('region_texts', 1), frames=spec.get('frames', 1)).items()}
        yield batch
        step += 1


_finite_leaves = jax.jit(lambda tree: jax.tree.map(lambda x: jnp.isfinite(x).all(), tree))


def non_finite(metrics: dict, params) -> list[str]:
    """Names of the non-finite metrics and parameters (a parameter is checked as a whole)."""
    finite = jax.device_get(_finite_leaves(params))
    bad = [k for k, v in metrics.items() if not np.isfinite(v)]
    return bad + [f'param {jax.tree_util.keystr(path)}'
                  for path, ok in jax.tree_util.tree_leaves_with_path(finite) if not ok]


def train(config, workdir: str) -> dict:
    """Runs (or resumes) training; returns the last step's metrics as floats."""
    workdir = os.path.abspath(workdir)  # Orbax (tensorstore) needs absolute paths
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
        if config.train.init_from:  # a resume ignores it: the run's own checkpoint has it all
            params, _, _ = checkpoint_lib.load_matching_params(
                config.train.init_from, state.params, config.train.init_exclude)
            state = state.replace(params=params)
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
    from clu import metric_writers, periodic_actions
    is_chief = jax.process_index() == 0  # only process 0 writes files
    writer = metric_writers.create_default_writer(
        os.path.join(workdir, 'tensorboard'), just_logging=not is_chief)
    writer.write_hparams({k: v for k, v in config.train.items()})
    hooks = [periodic_actions.ReportProgress(  # steps/s and ETA, logged and written
        num_train_steps=config.train.total_steps, writer=writer, every_steps=config.train.log_every,
        every_secs=None)]
    if config.train.profile_steps and is_chief:
        hooks.append(periodic_actions.Profile(
            logdir=workdir, num_profile_steps=config.train.profile_steps,
            first_profile=start_step + config.train.profile_first_step, every_secs=None))
    batch_sizes = {s: config.batch[s].batch_size for s in config.streams}
    step_flops = flops.train_step_flops(config, {
        s: dict(batch=config.batch[s].batch_size, text_len=config.batch[s].get('text_len', 1),
                region_texts=config.batch[s].get('region_texts', 1),
                frames=config.batch[s].get('frames', 1)) for s in config.streams})['total']
    peak = flops.peak_flops_for(jax.devices()[0].device_kind)  # None on CPU: no MFU
    logging.info('%.3g model FLOPs per step; device peak %s FLOP/s', step_flops, peak)

    # ---- loop --------------------------------------------------------------------------------
    metrics = {}
    with partitioning.sharding_context(mesh, rules):
        for step in range(start_step, config.train.total_steps):
            state, metrics = step_fn(state, next(batches), rng)
            done = step + 1
            for hook in hooks:
                hook(done)
            if step == start_step:  # rates exclude the compilation
                jax.block_until_ready(metrics)
                window_start, window_step = time.perf_counter(), done
            preempted = checkpoints.preempted(done)
            saving = preempted or checkpoints.due(done)
            logging_step = done % config.train.log_every == 0 or done == config.train.total_steps
            if saving or logging_step:  # a checkpoint must hold finite parameters
                metrics = jax.device_get(metrics)
                if bad := non_finite(metrics, state.params):
                    raise FloatingPointError(f'Non-finite {bad} at step {done}; the last good '
                                             f'checkpoint is kept in {checkpoints.directory}.')
            if logging_step and done > window_step:
                now = time.perf_counter()
                steps_per_second = (done - window_step) / (now - window_start)
                window_start, window_step = now, done
                scalars = dict(metrics)
                scalars.update({f'examples_per_second/{s}': n * steps_per_second
                                for s, n in batch_sizes.items()})
                scalars['model_flops_per_second_per_device'] = (
                    step_flops * steps_per_second / jax.device_count())
                if peak:
                    scalars['mfu'] = scalars['model_flops_per_second_per_device'] / peak
                if 'data' in config:
                    scalars.update({f'bad_data/{s}': sum(c.values())
                                    for s, c in batches.bad_counts().items()})
                writer.write_scalars(done, scalars)
            if logging_step:
                logging.info('step %d: loss %.4f', done, metrics['loss'])
            if saving:
                checkpoints.save(done, state, data_position(), force=preempted)
            if preempted:
                logging.warning('preempted: saved step %d, exiting', done)
                break
        checkpoints.save(int(state.step), state, data_position(), force=True)
    checkpoints.wait()
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if 'data' in config:  # held-out evaluation of the final parameters (TF-based readers)
        from xfm_jax import evaluate
        results = evaluate.run_evaluators(config, state.params, mesh, rules, workdir=workdir,
                                          step=int(state.step))
        path = evaluate.write_results(workdir, int(state.step), checkpoints.directory, results)
        if is_chief:
            print(f'Held-out evaluation at step {int(state.step)} (chance/ rows: chance level):\n'
                  f'{evaluate.format_table(results)}\nMetrics: {path}')
    writer.flush()
    if is_chief:
        with open(os.path.join(workdir, METRICS_FILE), 'w') as f:
            json.dump({'step': int(state.step), 'metrics': metrics}, f, indent=2, sort_keys=True)
    print(f'Checkpoints: {checkpoints.directory}\nTensorBoard: tensorboard --logdir '
          f'{os.path.join(workdir, "tensorboard")}')
    return metrics


def main(argv):
    del argv
    distributed.initialize()  # before any other jax call: joins the hosts of a pod / SLURM job
    jnp.zeros(())  # initialise the backend before logging device facts
    logging.info('%d devices: %s', jax.device_count(), jax.devices()[0].device_kind)
    train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == '__main__':
    # Defined here rather than at import, so that a config file or a test may import this
    # module (for train()) while it runs as the program without defining the flags twice.
    config_flags.DEFINE_config_file('config', None, 'Run config (configs/*.py[:preset]).',
                                    lock_config=True)
    flags.DEFINE_string('workdir', None, 'Checkpoints and logs go here.')
    flags.mark_flags_as_required(['config', 'workdir'])
    from xfm_jax import cli
    app.run(main, flags_parser=cli.parse_flags)
