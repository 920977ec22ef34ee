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

import functools
import os
import sys
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from xfm_jax import checkpoint as checkpoint_lib
from xfm_jax import cli, compilation, distributed, flops, partitioning, paths, streams, summaries
from xfm_jax import train_step as ts
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
            shape = streams.batch_shape(config, stream)
            local = shape['batch'] // jax.process_count()
            rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
            batch[stream] = {k: v[rows] for k, v in streams.synthetic_batch(
                stream, rng, vocab_size=text.vocab_size, pad_id=text.pad_id,
                mask_id=text.mask_id, num_masked_patches=config.objectives.mim.num_masked,
                image_size=vision.image_size, patch_size=vision.patch_size, **shape).items()}
        yield batch
        step += 1


def non_finite(metrics: dict, params) -> list[str]:
    """Names of the non-finite metrics and parameters (a parameter is checked as a whole)."""
    bad = [k for k, v in metrics.items() if not np.isfinite(v)]
    return bad + [f'param {name}' for name in checkpoint_lib.non_finite_params(params)]


def data_quality_scalars(batches) -> dict[str, int]:
    """TensorBoard scalars of the input's bad records, each counted once:
    ``bad_data/<stream>`` (all drops), ``bad_data/<stream>/<reason>`` and
    ``converted/<stream>/<kind>`` (images kept after a conversion)."""
    out = {}
    for stream, reasons in batches.bad_counts().items():
        out[f'bad_data/{stream}'] = sum(reasons.values())
        out.update({f'bad_data/{stream}/{reason}': n for reason, n in reasons.items()})
    for stream, kinds in batches.converted_counts().items():
        out.update({f'converted/{stream}/{kind}': n for kind, n in kinds.items()})
    return out


def train(config, workdir: str) -> dict:
    """Runs (or resumes) training in ``workdir`` (local or ``gs://``); returns the last step's
    metrics as floats."""
    cli.validate(config)  # bad counts fail here, in one line, before anything compiles
    workdir = paths.resolve(workdir)
    compilation.enable_cache(config.train.get('compilation_cache_dir', ''))
    lock = checkpoint_lib.WorkdirLock(workdir, config.checkpoint.lock_stale_seconds)
    lock.acquire()  # one run per workdir; released however the run ends
    try:
        return _train(config, workdir, lock)
    finally:
        lock.release()


def _during_training(config) -> str:
    """The evaluators of the evaluations every ``train.eval_every`` steps (comma-separated);
    checked before anything compiles."""
    if not config.train.get('eval_every', 0):
        return ''
    if 'data' not in config:
        raise ValueError(f'config.train.eval_every={config.train.eval_every} needs held-out data '
                         '(config.data); this config trains on random batches.')
    from xfm_jax import evaluators
    return ','.join(evaluators.check_names(config.evaluate.during_training, config.evaluate,
                                           'config.evaluate.during_training'))


def _check_evaluation_sources(config, during_training: str) -> None:
    """The evaluators during and after training and their held-out sources, checked before
    anything compiles (a misspelt final evaluator or a region-only run's missing grounding
    source fails now, not after training)."""
    if 'data' not in config:
        return
    from xfm_jax import evaluators
    from xfm_jax.evaluators import data
    names = set(evaluators.parse_names(during_training))
    names |= set(evaluators.check_names(config.evaluate.evaluators, config.evaluate,
                                        'config.evaluate.evaluators'))
    data.check_sources(config, sorted(names))


def _train(config, workdir, lock) -> dict:
    during_training = _during_training(config)
    _check_evaluation_sources(config, during_training)
    if 'data' in config:
        from xfm_jax.data import tasks  # TensorFlow and seqio load only for real data
        tasks.fit_model_to_vocabulary(config)
    # ---- mesh --------------------------------------------------------------------------------
    mesh = partitioning.make_mesh(config.partitioning.mesh)
    rules = partitioning.get_rules(config.partitioning.rules)
    logging.info('mesh %s, rules %s', dict(mesh.shape), config.partitioning.rules)

    # ---- model, optimizer, sharded state -----------------------------------------------------
    model = build_model(config.model)
    tx, schedule = ts.make_optimizer(config)
    checkpoints = checkpoint_lib.Checkpoints(workdir / checkpoint_lib.CHECKPOINTS_DIR, config)
    setup = partitioning.setup_state(  # the newest checkpoint, else a fresh state
        functools.partial(ts.create_train_state, model, tx), mesh, rules,
        seed=config.train.seed, restore=checkpoints.restore_latest)
    state, state_sh, data_state = setup.state, setup.shardings, setup.extra
    if config.train.init_from and not setup.restored:  # a resume has it all in its own
        source = checkpoint_lib.locate(config.train.init_from, fusion_from_text_layers=(
            config.train.get('init_fusion_from_text_layers', '')))
        if source.family not in (None, config.model.family):
            logging.warning('init_from %s is a %r checkpoint; this run trains %r: only '
                            'parameters with the same name and shape are loaded',
                            source.tree, source.family, config.model.family)
        params, _, _ = checkpoint_lib.load_matching_params(
            source, state.params, config.train.init_exclude)
        state = state.replace(params=params)
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
    rng = jax.random.key(config.train.seed + 1)
    batch = next(batches) if start_step < config.train.total_steps else None
    if batch is not None:  # compiled here, logged, so a long compile is never silent
        with partitioning.sharding_context(mesh, rules):
            step_fn = compilation.compile_logged(ts.jit_train_step(step, state_sh, batch_sh),
                                                 state, batch, rng, name='the train step')
        distributed.barrier('train_step_compiled')  # no host starts the step alone

    # ---- metrics -----------------------------------------------------------------------------
    from clu import metric_writers, periodic_actions
    is_chief = jax.process_index() == 0  # only process 0 writes files
    writer = metric_writers.create_default_writer(
        os.fspath(workdir / 'tensorboard'), just_logging=not is_chief)
    writer.write_hparams({k: v for k, v in config.train.items()})
    progress = periodic_actions.ReportProgress(  # steps/s and ETA, logged and written
        num_train_steps=config.train.total_steps, writer=writer, every_steps=config.train.log_every,
        every_secs=None)
    hooks = [progress]
    if config.train.profile_steps and is_chief:
        hooks.append(periodic_actions.Profile(
            logdir=os.fspath(workdir), num_profile_steps=config.train.profile_steps,
            first_profile=start_step + config.train.profile_first_step, every_secs=None))
    batch_sizes = {s: config.batch[s].batch_size for s in config.streams}
    step_flops = flops.train_step_flops(
        config, {s: streams.batch_shape(config, s) for s in config.streams})['total']
    peak = flops.peak_flops_for(jax.devices()[0].device_kind)  # None on CPU: no MFU
    logging.info('%.3g model FLOPs per step; device peak %s FLOP/s', step_flops, peak)

    window = summaries.WindowAverage()  # each metric's mean over the logging window

    def evaluate(names: str | None = None) -> dict[str, float]:
        from xfm_jax.evaluators import runner  # TF-based readers: real data only
        return runner.run_evaluators(config, state.params, mesh, rules, workdir=workdir,
                                     step=int(state.step), names=names, writer=writer,
                                     checkpoint=os.fspath(checkpoints.directory))

    # ---- loop --------------------------------------------------------------------------------
    metrics = {}
    with partitioning.sharding_context(mesh, rules):
        for step in range(start_step, config.train.total_steps):
            state, metrics = step_fn(state, batch, rng)
            window.add(metrics)
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
                averages = window.result()  # a non-finite step anywhere in the window shows
                if bad := non_finite(averages, state.params):
                    raise FloatingPointError(f'Non-finite {bad} at step {done}; the last good '
                                             f'checkpoint is kept in {checkpoints.directory}.')
            if logging_step and done > window_step:
                now = time.perf_counter()
                steps_per_second = (done - window_step) / (now - window_start)
                window_start, window_step = now, done
                scalars = summaries.prefixed(summaries.TRAIN, summaries.with_itm_prior(averages))
                scalars.update({f'examples_per_second/{s}': n * steps_per_second
                                for s, n in batch_sizes.items()})
                scalars['model_flops_per_second_per_device'] = (
                    step_flops * steps_per_second / jax.device_count())
                if peak:
                    scalars['mfu'] = scalars['model_flops_per_second_per_device'] / peak
                if 'data' in config:  # each record once: dropped and converted apart
                    scalars.update(data_quality_scalars(batches))
                writer.write_scalars(done, scalars)
            if logging_step:
                logging.info('step %d: loss %.4f (mean over the window)', done, averages['loss'])
                window.reset()
                lock.heartbeat()
            if saving:
                checkpoints.save(done, state, data_position(), force=preempted)
            if preempted:
                logging.warning('preempted: saved step %d, exiting', done)
                break
            if (during_training and done % config.train.eval_every == 0
                    and done < config.train.total_steps):  # the last step runs every evaluator
                started = time.perf_counter()
                with progress.timed('eval'):
                    evaluate(during_training)
                window_start += time.perf_counter() - started  # rates exclude the evaluation
            if done < config.train.total_steps:
                batch = next(batches)
        checkpoints.save(int(state.step), state, data_position(), force=True)
    checkpoints.wait()
    metrics = summaries.means(metrics)  # per-source losses: the last step's row-weighted means
    if 'data' in config:  # held-out evaluation of the final parameters
        from xfm_jax.evaluators import runner
        results = evaluate()
        if is_chief:
            print(f'Held-out evaluation at step {int(state.step)} (chance/ rows: chance level):\n'
                  f'{runner.format_table(results)}\n'
                  f'Metrics: {runner.results_path(workdir, int(state.step))}')
    writer.flush()
    if is_chief:
        summary = {'step': int(state.step), 'metrics': metrics}
        if 'data' in config:
            summary['data'] = {'dropped': batches.bad_counts(),
                               'converted': batches.converted_counts()}
        paths.write_json(workdir / METRICS_FILE, summary)
        from xfm_jax import curves
        print(f'Curves: {curves.draw(workdir)}')
    print(f'Checkpoints: {checkpoints.directory}\nTensorBoard: tensorboard --logdir '
          f'{workdir / "tensorboard"}')
    return metrics


def main(argv):
    del argv
    distributed.initialize()  # before any other jax call: joins the hosts of a pod / SLURM job
    jnp.zeros(())  # initialise the backend before logging device facts
    logging.info('%d devices: %s', jax.device_count(), jax.devices()[0].device_kind)
    try:
        train(flags.FLAGS.config, flags.FLAGS.workdir)
    except checkpoint_lib.CheckpointError as e:  # one line naming the path and the cause
        sys.exit(f'FATAL {e}')


def run():
    """The program (``python -m xfm_jax.train`` and the console script): flags, then main.
    Flags are defined here, not at import, so that modules and tests may import this one."""
    config_flags.DEFINE_config_file('config', None, 'Run config (configs/*.py[:preset]).',
                                    lock_config=True)
    flags.DEFINE_string('workdir', None, 'Checkpoints and logs go here.')
    flags.mark_flags_as_required(['config', 'workdir'])
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
    run()
