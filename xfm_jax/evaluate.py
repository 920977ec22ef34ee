r"""Evaluation program: restore parameters only, run the configured evaluators, write metrics.

    python -m xfm_jax.evaluate --workdir=DIR
        # newest checkpoint of DIR/checkpoints (written by xfm_jax.train), evaluated with the
        # config the run stored in it (model, vocabulary, evaluators)
    python -m xfm_jax.evaluate --config=configs/xfm_base.py:runlocal --workdir=OUT \
        --checkpoint=DIR/checkpoints/300
        # one step directory; the model and vocabulary still come from the checkpoint, the
        # evaluators and their data from --config
    python -m xfm_jax.evaluate --config=... --workdir=OUT --checkpoint=CONVERTED
        # an output of `python -m xfm_jax.convert` or `xfm_jax.finetune`
    python -m xfm_jax.evaluate --config=... --workdir=OUT --random_init
        # no checkpoint: the model as initialised with config.train.seed (the baseline that
        # shows what pre-training adds)

Paths may be local or ``gs://``. Only the parameters are read (no optimizer state), onto the
current mesh, whatever device count wrote them (``xfm_jax.checkpoint``). Evaluators come from
``config.evaluate`` (``xfm_jax.evaluators.evaluate_config`` when the config has none). Metrics go
to ``OUT/eval_step{step}.json`` (after each evaluator), to TensorBoard (``OUT/tensorboard``, as
``eval/<evaluator>/<metric>``) and to stdout as a table.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from xfm_jax import checkpoint, compilation, partitioning
from xfm_jax.evaluators import runner
from xfm_jax.models.model import build_model


def evaluate(config, workdir: str, checkpoint_path: str | None = None,
             devices: list[jax.Device] | None = None,
             random_init: bool = False) -> dict[str, float]:
    """Restores the parameters of ``checkpoint_path`` (default: ``workdir``'s newest step; see
    ``checkpoint.locate``) onto a mesh over ``devices`` (default: all), runs the evaluators and
    writes the results to ``workdir``. ``config`` None: the run config stored in the checkpoint;
    otherwise the checkpoint's model and vocabulary replace ``config``'s. ``random_init``: no
    checkpoint, the model initialised with ``config.train.seed`` instead (results as step 0)."""
    if random_init:
        if checkpoint_path:
            raise ValueError('Pass either --checkpoint or --random_init, not both.')
        if config is None:
            raise ValueError('--random_init needs --config (there is no checkpoint to read one '
                             'from).')
        location, restore = None, None
        seed = int(config.train.seed) if 'train' in config else 0
        source, step = f'random initialisation (seed {seed})', 0
    else:
        location = checkpoint.locate(checkpoint_path or workdir)
        if location.family not in (None, 'xfm', 'x2vlm'):
            raise ValueError(f'{location.tree}: format {location.family!r} is not a whole model; '
                             "evaluation needs 'xfm' or 'x2vlm'.")
        if config is None:
            if not location.description or 'config' not in location.description:
                raise ValueError(f'{location.tree} stores no run config (written before '
                                 'checkpoints described themselves): pass --config.')
            config = checkpoint.stored_config(location.description)
        else:
            config = checkpoint.adopt_stored_model(config, location.description)
        seed, source, step = 0, os.fspath(location.tree), location.step

        def restore(abstract, shardings):  # the parameters only, onto this mesh
            return checkpoint.restore_params(location, abstract, shardings), None
    mesh = partitioning.make_mesh(config.partitioning.mesh, devices)
    rules = partitioning.get_rules(config.partitioning.rules)
    params = partitioning.setup_state(partitioning.params_init(build_model(config.model)), mesh,
                                      rules, seed=seed, restore=restore).state
    if location is not None:
        logging.info('restored params of step %d from %s onto mesh %s', step, source,
                     dict(mesh.shape))
    results = runner.run_evaluators(config, params, mesh, rules, workdir=workdir, step=step,
                                    checkpoint=source)
    print(f'Evaluation of {source} (step {step}):\n{runner.format_table(results)}\n'
          f'Metrics: {runner.results_path(workdir, step)}')
    return results


def main(argv):
    del argv
    config = flags.FLAGS.config
    compilation.enable_cache(config.train.get('compilation_cache_dir', '')
                             if config is not None and 'train' in config
                             else compilation.DEFAULT_CACHE_DIR)
    try:
        evaluate(config, flags.FLAGS.workdir, flags.FLAGS.checkpoint,
                 random_init=flags.FLAGS.random_init)
    except (checkpoint.CheckpointError, FileNotFoundError) as e:  # one line: path and cause
        sys.exit(f'FATAL {e}')


def run():
    """The program (``python -m xfm_jax.evaluate`` and the console script): flags, then main.
    Flags are defined here, not at import, so that modules and tests may import this one."""
    config_flags.DEFINE_config_file('config', None, 'Run config (configs/*.py[:preset]); '
                                    'default: the config stored in the checkpoint.',
                                    lock_config=True)
    flags.DEFINE_string('workdir', None, 'Metrics go here; without --checkpoint the newest '
                        'checkpoint of WORKDIR/checkpoints is evaluated.')
    flags.DEFINE_string('checkpoint', None, 'A training workdir or one of its step directories, '
                        'or an output of xfm_jax.convert / xfm_jax.finetune (local or gs://).')
    flags.DEFINE_bool('random_init', False, 'Evaluate the model as initialised with '
                      'config.train.seed instead of a checkpoint (the baseline).')
    flags.mark_flags_as_required(['workdir'])
    from xfm_jax import cli
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
    run()
