r"""Evaluation program: restore parameters only, run the configured evaluators, write metrics.

    python -m xfm_jax.evaluate --config=configs/xfm_base.py:runlocal --workdir=DIR
        # newest checkpoint of DIR/checkpoints (written by xfm_jax.train)
    python -m xfm_jax.evaluate --config=... --workdir=OUT --checkpoint=DIR/checkpoints/300
        # one Orbax step directory
    python -m xfm_jax.evaluate --config=... --workdir=OUT --checkpoint=CONVERTED
        # an output of `python -m xfm_jax.convert` (its model_config.json defines the model)
    python -m xfm_jax.evaluate --config=... --workdir=OUT --random_init
        # no checkpoint: the model as initialised with config.train.seed (the baseline that
        # shows what pre-training adds)

Only the parameters are read (no optimizer state), onto the current mesh, whatever device count
wrote them. Evaluators come from ``config.evaluate`` (``xfm_jax.evaluators.evaluate_config``
when the config has none). Metrics go to ``OUT/eval_step{step}.json``, to TensorBoard
(``OUT/tensorboard``, as ``eval/<evaluator>/<metric>``) and to stdout as a table.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging
import flax
import flax.linen as nn
import jax
import ml_collections
from ml_collections import config_flags

from xfm_jax import partitioning
from xfm_jax import evaluators
from xfm_jax.evaluators import batching
from xfm_jax.models.model import abstract_variables, build_model, init_variables

CONVERTED_CONFIG = 'model_config.json'  # xfm_jax.convert's output: DIR/params + this file


# ---- locating and restoring parameters ---------------------------------------------------------

def locate(workdir: str | None, checkpoint: str | None) -> tuple[str, int, dict | None]:
    """(directory of the Orbax tree holding 'params', step, converted model config or None)."""
    # Orbax (tensorstore) reads absolute paths only.
    workdir = os.path.abspath(workdir) if workdir else workdir
    checkpoint = os.path.abspath(checkpoint) if checkpoint else checkpoint
    if checkpoint is None:
        if workdir is None:
            raise ValueError('Pass --checkpoint, or --workdir holding checkpoints/.')
        directory = os.path.join(workdir, 'checkpoints')
        steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(
            directory) else []
        if not steps:
            raise FileNotFoundError(f'No complete checkpoint in {directory}.')
        checkpoint = os.path.join(directory, str(steps[-1]))
    checkpoint = os.path.abspath(checkpoint)
    if os.path.basename(checkpoint) == 'params':  # the Orbax tree inside a converted directory
        checkpoint = os.path.dirname(checkpoint)
    config_path = os.path.join(checkpoint, CONVERTED_CONFIG)
    if os.path.isfile(config_path):
        with open(config_path) as f:
            converted = json.load(f)
        if converted.get('format') not in ('xfm', 'x2vlm'):
            raise ValueError(f"{config_path}: format {converted.get('format')!r} is a single "
                             "tower; evaluation needs a whole model ('xfm' or 'x2vlm').")
        return os.path.join(checkpoint, 'params'), 0, converted['model']
    if os.path.isdir(os.path.join(checkpoint, 'state')):
        name = os.path.basename(checkpoint)
        return os.path.join(checkpoint, 'state'), int(name) if name.isdigit() else 0, None
    raise FileNotFoundError(f'{checkpoint} is neither an Orbax step directory (with a state/ '
                            f'item) nor a converted checkpoint (with {CONVERTED_CONFIG}).')


def restore_params(directory: str, abstract_params, shardings):
    """The ``params`` subtree of the Orbax tree in ``directory`` (a TrainState's or a converted
    ``{'params': ...}``), placed on ``shardings``; anything else stored there is not read.

    Raises ValueError naming every parameter that is missing or has another shape.
    """
    import orbax.checkpoint as ocp
    checkpointer = ocp.PyTreeCheckpointer()
    stored = checkpointer.metadata(directory).item_metadata.tree.get('params', {})
    stored = flax.traverse_util.flatten_dict(stored, sep='/')
    wanted = flax.traverse_util.flatten_dict(nn.unbox(abstract_params), sep='/')
    problems = [f'{k}: missing' for k in sorted(set(wanted) - set(stored))]
    problems += [f'{k}: stored {tuple(stored[k].shape)}, model {tuple(v.shape)}'
                 for k, v in sorted(wanted.items())
                 if k in stored and tuple(stored[k].shape) != tuple(v.shape)]
    if problems:
        raise ValueError(f'{directory} does not hold this model\'s params ({len(problems)} '
                         'problems; check --config matches the checkpoint):\n  '
                         + '\n  '.join(problems[:20]))
    target = {'params': jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.unbox(abstract_params), shardings)}
    restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
    return restored['params']


def param_shardings(model, mesh, rules):
    """(abstract boxed params, NamedShardings of the unboxed params) of ``model``."""
    abstract = abstract_variables(model)['params']
    return abstract, partitioning.state_shardings(abstract, mesh, rules)


# ---- running evaluators ------------------------------------------------------------------------

def run_evaluators(config, params, mesh, rules, *, workdir: str | None = None,
                   step: int = 0) -> dict[str, float]:
    """Runs ``config.evaluate.evaluators`` on ``params`` (sharded on ``mesh``); returns
    ``{'<evaluator>/<metric>': value}``. Evaluators may write files (a gallery) to ``workdir``."""
    settings = config.evaluate if 'evaluate' in config else evaluators.evaluate_config(
        video=bool(config.model.video_frames))
    names = [n.strip() for n in settings.evaluators.split(',') if n.strip()]
    ctx = batching.EvalContext(model=build_model(config.model), params=params, mesh=mesh,
                               rules=rules, config=config, batch_size=settings.batch_size,
                               workdir=workdir, step=step)
    results = {}
    for name in names:
        evaluate = evaluators.get(name)
        if name not in settings:
            raise ValueError(f'config.evaluate has no settings section {name!r}.')
        start = time.perf_counter()
        metrics = evaluate(ctx, settings[name])
        logging.info('%s: %.1f s', name, time.perf_counter() - start)
        results.update({f'{name}/{k}': float(v) for k, v in metrics.items()})
    return results


def format_table(results: dict[str, float]) -> str:
    width = max(map(len, results), default=0)
    return '\n'.join(f'{k:<{width}}  {v:10.3f}' for k, v in sorted(results.items()))


def write_results(workdir: str, step: int, checkpoint: str, results: dict[str, float]) -> str:
    """``workdir/eval_step{step}.json`` and TensorBoard scalars; returns the JSON path."""
    from clu import metric_writers
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, f'eval_step{step}.json')
    if jax.process_index() == 0:
        with open(path, 'w') as f:
            json.dump({'step': step, 'checkpoint': checkpoint, 'metrics': results}, f, indent=2,
                      sort_keys=True)
    writer = metric_writers.create_default_writer(
        os.path.join(workdir, 'tensorboard'), just_logging=jax.process_index() > 0)
    writer.write_scalars(step, {f'eval/{k}': v for k, v in results.items()})
    writer.flush()
    return path


def random_params(model, mesh, rules, seed: int):
    """Freshly initialised params (``init_variables`` with ``jax.random.key(seed)``, as training
    starts), created directly in their shardings."""
    _, shardings = param_shardings(model, mesh, rules)
    init = jax.jit(lambda rng: nn.unbox(init_variables(model, rng)['params']),
                   out_shardings=shardings)
    return init(jax.random.key(seed))


def evaluate(config, workdir: str, checkpoint: str | None = None,
             devices: list[jax.Device] | None = None,
             random_init: bool = False) -> dict[str, float]:
    """Restores the parameters (see :func:`locate`) onto a mesh over ``devices`` (default: all),
    runs the evaluators, writes the results. ``random_init``: no checkpoint, the model
    initialised with ``config.train.seed`` instead (results as step 0)."""
    if random_init:
        if checkpoint:
            raise ValueError('Pass either --checkpoint or --random_init, not both.')
        mesh = partitioning.make_mesh(config.partitioning.mesh, devices)
        rules = partitioning.get_rules(config.partitioning.rules)
        seed = int(config.train.seed) if 'train' in config else 0
        params = random_params(build_model(config.model), mesh, rules, seed)
        directory, step = f'random initialisation (seed {seed})', 0
    else:
        config, directory, step, params, mesh, rules = _restore(config, workdir, checkpoint,
                                                                devices)
    os.makedirs(workdir, exist_ok=True)  # evaluators write their galleries there
    results = run_evaluators(config, params, mesh, rules, workdir=workdir, step=step)
    path = write_results(workdir, step, directory, results)
    print(f'Evaluation of {directory} (step {step}):\n{format_table(results)}\n'
          f'Metrics: {path}')
    return results


def _restore(config, workdir, checkpoint, devices):
    """(config, with a converted checkpoint's model; Orbax directory; step; params; mesh;
    rules)."""
    directory, step, converted_model = locate(workdir, checkpoint)
    if converted_model is not None:
        config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy
        config.model = ml_collections.ConfigDict(converted_model)
        logging.info('model config from %s', CONVERTED_CONFIG)
    mesh = partitioning.make_mesh(config.partitioning.mesh, devices)
    rules = partitioning.get_rules(config.partitioning.rules)
    abstract, shardings = param_shardings(build_model(config.model), mesh, rules)
    params = restore_params(directory, abstract, shardings)
    logging.info('restored params of step %d from %s onto mesh %s', step, directory,
                 dict(mesh.shape))
    return config, directory, step, params, mesh, rules


def main(argv):
    del argv
    evaluate(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.checkpoint,
             random_init=flags.FLAGS.random_init)


if __name__ == '__main__':
    # Flags live here, not at import time: xfm_jax.train imports this module for its final eval.
    config_flags.DEFINE_config_file('config', None, 'Run config (configs/*.py[:preset]).',
                                    lock_config=True)
    flags.DEFINE_string('workdir', None, 'Metrics go here; without --checkpoint the newest '
                        'checkpoint of WORKDIR/checkpoints is evaluated.')
    flags.DEFINE_string('checkpoint', None, 'An Orbax step directory of a training run, or a '
                        'converted checkpoint directory.')
    flags.DEFINE_bool('random_init', False, 'Evaluate the model as initialised with '
                      'config.train.seed instead of a checkpoint (the baseline).')
    flags.mark_flags_as_required(['config', 'workdir'])
    from xfm_jax import cli
    app.run(main, flags_parser=cli.parse_flags)
