r"""Fine-tuning program: pre-trained parameters -> task head -> AdamW -> evaluation.

    python -m xfm_jax.finetune --config=configs/finetune/vqa.py:tiny --workdir=DIR \
        [--init=CHECKPOINT] [--config.train.trainable=head ...]

``--init`` is a pre-training workdir (its newest checkpoint), one of its step directories, an
output of ``python -m xfm_jax.convert`` or of this program, local or ``gs://``: the model (family,
sizes) and vocabulary the checkpoint stores replace ``config.model`` and ``config.data.vocab``,
except ``stop_gradient_text``, which fine-tuning turns off. Only the parameters
the task uses are read, onto this run's mesh; a fine-tuning output of the same task also restores
the task's own parameters (its head). Without ``--init`` the backbone starts from random
initialisation.

Sections: mesh -> pre-trained location -> data -> task model / optimizer / sharded state ->
restore -> update step -> loop with evaluations -> save. Outputs in ``--workdir``:
``finetune.json`` (config, init, train history: each metric's mean over its logging window, final
metrics), TensorBoard scalars ``train/<metric>`` and ``eval/<task>/<metric>`` in ``tensorboard/``
(the tag names of ``xfm_jax.summaries``), the fine-tuned parameters (``params/`` +
``model_config.json``, the layout of a converted checkpoint: ``python -m xfm_jax.evaluate --checkpoint=WORKDIR`` and
``--init=WORKDIR`` read it; see :func:`save_params`), and a table with each metric's chance level
on stdout.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from typing import Any

from absl import app, flags, logging
import flax
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from ml_collections import config_flags

from xfm_jax import checkpoint
from xfm_jax import cli, compilation, finetuning, optim, partitioning, paths, summaries
from xfm_jax.finetuning import common
from xfm_jax.models.model import build_model
from xfm_jax.train_step import TrainState, jit_train_step

RESULTS = 'finetune.json'
PARAMS = 'params'  # Orbax tree in the workdir: {'params': whole model, 'task': the task's own}
TRAINABLE = ('all', 'head')


@dataclasses.dataclass
class Run:
    """What a task's ``evaluate`` needs: the task model, its sharded params, the mesh."""
    config: ml_collections.ConfigDict
    task_model: nn.Module
    params: Any
    mesh: jax.sharding.Mesh
    rules: Any
    batch_size: int
    workdir: str | None = None
    step: int = 0
    # Galleries a task drew, {name: uint8 [H, W, 3]}: written to TensorBoard beside the metrics.
    images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def predict(self, examples: common.Examples, name: str) -> np.ndarray:
        return common.predict(self.task_model, self.params, examples,
                              batch_size=self.batch_size, mesh=self.mesh, rules=self.rules,
                              name=name)


def own_params(params):
    """The task's own params: everything but the backbone ``params['model']``."""
    return {k: v for k, v in params.items() if k != 'model'}


def save_params(workdir, config, params, mesh, rules,
                init: checkpoint.Location | None, label_names=()) -> str:
    """Writes the fine-tuned ``params`` as ``workdir/params`` beside ``model_config.json`` (the
    layout of a converted checkpoint, with this run's config and vocabulary: see
    ``checkpoint.save_params``). Under 'params' the WHOLE ``VisionLanguageModel`` (so the
    evaluators can run on it): fine-tuned where the task used it, elsewhere as read from
    ``init`` (random initialisation without one); under 'task' the task's own params;
    ``label_names`` (a classifier's outputs, e.g. VQA's answers) in the description. Returns
    the params directory."""
    model = build_model(config.model)
    whole = partitioning.random_params(model, mesh, rules, config.train.seed)
    if init is not None:
        whole, _, _ = checkpoint.load_matching_params(init, whole)
    flat = flax.traverse_util.flatten_dict(whole, sep='/')
    flat.update(flax.traverse_util.flatten_dict(params['model'], sep='/'))
    tree = {'params': flax.traverse_util.unflatten_dict(flat, sep='/')}
    if own_params(params):
        tree['task'] = own_params(params)
    description = {'format': config.model.family, 'model': config.model.to_dict(),
                   'task': config.task.name, **checkpoint.describe_run(config)}
    if label_names:
        description['label_names'] = list(label_names)
    return os.fspath(checkpoint.save_params(workdir, tree, description))


def initial_params(config, task, params, abstract_params, shardings,
                   init: checkpoint.Location | None):
    """The task model's starting params, on ``shardings``: ``params`` (its random init) with

    1. the backbone ``params['model']`` restored from ``init`` (None: kept random);
    2. the params the task derives from the backbone (``task.params_from_backbone``: the
       generative VQA decoder copies the fusion encoder), in buffers of their own;
    3. the task's own params when ``init`` is a fine-tuning output of this task.
    """
    if init is not None:
        params = {**params, 'model': checkpoint.restore_params(
            init, abstract_params['model'], shardings['model'])}
    derive = functools.partial(getattr(task, 'params_from_backbone', lambda c, p: {}), config)
    names = sorted(jax.eval_shape(derive, params))
    if names:
        derived = jax.jit(derive, out_shardings={k: shardings[k] for k in names})(params)
        params = {**params, **derived}
        logging.info('task params %s derived from the backbone', names)
    own = (checkpoint.restore_task_params(init, config.task.name,
                                          own_params(abstract_params), own_params(shardings))
           if init is not None else None)
    if own is not None:
        params = {**params, **own}
        logging.info('task params %s restored from %s', sorted(own), init.tree)
    return params


def adopt_backbone_config(config, init: checkpoint.Location):
    """``config`` with the model family, sizes and vocabulary of the checkpoint ``init`` (the
    fine-tuning configs' X-FM default is only for runs without ``--init``). Fine-tuning keeps
    its own ``stop_gradient_text`` (off) and clips text lengths to the new model's
    positions."""
    config = checkpoint.adopt_stored_model(config, init.description, keep=('stop_gradient_text',))
    text = config.model.text
    max_len = text.max_positions - (2 if text.variant == 'roberta' else 0)  # RoBERTa offsets 2
    for holder in (config.task, config.data.streams.get('image_text', {})):
        if holder and 'text_len' in holder:
            holder.text_len = min(holder.text_len, max_len)
    return config


def trainable(params, mode: str):
    """The params the optimizer updates: all, or with ``mode='head'`` all but the backbone
    (``params['model']``), which then gets no gradient computed at all."""
    if mode not in TRAINABLE:
        raise ValueError(f'train.trainable must be one of {TRAINABLE}, got {mode!r}.')
    return params if mode == 'all' else own_params(params)


def make_train_step(task_model, tx, schedule, mode: str, temp_range):
    """``step(state, batch, rng) -> (state, metrics)``: one AdamW update of the task loss;
    ``state.opt_state`` covers ``trainable(params, mode)``."""
    def train_step(state: TrainState, batch, rng):
        dropout_rng, sample_rng = jax.random.split(jax.random.fold_in(rng, state.step))
        params = state.params
        if 'temp' in params['model']:  # the ITC temperature is clamped before every step
            params = {**params, 'model': optim.clamp_temperature(params['model'], *temp_range)}

        def loss_fn(trained):
            return task_model.apply({'params': {**params, **trained}}, batch, train=True,
                                    method='loss',
                                    rngs={'dropout': dropout_rng, 'sample': sample_rng})

        trained = trainable(params, mode)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
        updates, opt_state = tx.update(grads, state.opt_state, trained)
        metrics = {**metrics, 'loss': loss, 'grad_norm': optax.global_norm(grads),
                   'learning_rate': schedule(state.step)}
        params = {**params, **optax.apply_updates(trained, updates)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics
    return train_step


def format_table(results: dict[str, float]) -> str:
    """One line per metric with its chance level beside it: 'chance/<metric>', or for
    'group/<metric>' (retrieval's itc/, itm/) 'chance/<metric>'."""
    names = sorted(k for k in results if not k.startswith('chance/'))
    width = max(map(len, names), default=6)
    lines = [f'{"metric":<{width}}  {"value":>10}  {"chance":>10}']
    for name in names:
        chance = results.get(f'chance/{name}',
                             results.get(f'chance/{name.split("/", 1)[-1]}'))
        lines.append(f'{name:<{width}}  {results[name]:10.3f}  '
                     + (f'{chance:10.3f}' if chance is not None else f'{"":>10}'))
    return '\n'.join(lines)


def finetune(config, workdir: str, init: str | None = None,
             devices: list[jax.Device] | None = None) -> dict[str, Any]:
    """Fine-tunes and evaluates. Returns what ``finetune.json`` holds (``eval``: final metrics,
    ``train``: the logged train metrics, ...) plus ``params``: the fine-tuned parameters."""
    cli.validate(config)  # bad counts fail here, in one line, before anything compiles
    config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy
    workdir = paths.resolve(workdir)
    # ---- mesh --------------------------------------------------------------------------------
    mesh = partitioning.make_mesh(config.partitioning.mesh, devices)
    rules = partitioning.get_rules(config.partitioning.rules)
    batch_shards = partitioning.num_batch_shards(mesh)

    # ---- pre-trained parameters: where, and which model -------------------------------------
    location = checkpoint.locate(init) if init else None
    if location is not None:
        config = adopt_backbone_config(config, location)

    # ---- data --------------------------------------------------------------------------------
    task = finetuning.get(config.task.name)
    settings = config.task
    train_set = task.read(config, settings.train_split, settings.max_train)
    eval_set = task.read(config, settings.eval_split, settings.max_eval)
    logging.info('%s: %d training and %d evaluation examples', settings.name, len(train_set),
                 len(eval_set))

    # ---- task model, optimizer, sharded state -------------------------------------------------
    task_model = task.build(config, build_model(config.model), train_set,
                            batch_shards=batch_shards)
    sample = train_set.take(np.arange(1))
    mode = config.train.trainable
    tx, schedule = optim.make_optimizer(config.optimizer, config.train.total_steps)

    def init_state(rng):  # boxed params (logical axes), for partitioning.setup_state
        params_rng, dropout_rng, sample_rng = jax.random.split(rng, 3)
        params = task_model.init({'params': params_rng, 'dropout': dropout_rng,
                                  'sample': sample_rng}, sample)['params']
        return TrainState(step=np.zeros((), np.int32), params=params,
                          opt_state=tx.init(trainable(params, mode)))

    setup = partitioning.setup_state(init_state, mesh, rules, seed=config.train.seed)
    state, shardings, abstract = setup.state, setup.shardings, setup.abstract
    if mode == 'head' and set(abstract.params) == {'model'}:
        raise ValueError(f"Task {settings.name!r} has no head of its own; train.trainable='head' "
                         "would train nothing.")

    # ---- restore the backbone, derive and restore the task's params -----------------------------
    if location is None:
        logging.warning('No --init: the backbone starts from random initialisation.')
    state = state.replace(params=initial_params(config, task, state.params, abstract.params,
                                                shardings.params, location))
    if location is not None:
        logging.info('backbone from %s (step %d) onto mesh %s', location.tree, location.step,
                     dict(mesh.shape))

    # ---- update step ---------------------------------------------------------------------------
    step_fn = jit_train_step(
        make_train_step(task_model, tx, schedule, mode, tuple(config.model.temp_range)),
        shardings,
        partitioning.batch_sharding(mesh))
    rng = jax.random.key(config.train.seed + 1)
    batches = common.training_batches(train_set, config.train.batch_size, mesh,
                                      config.train.seed)
    batch = next(batches)
    with partitioning.sharding_context(mesh, rules):  # compiled here, logged
        step_fn = compilation.compile_logged(step_fn, state, batch, rng,
                                             name=f'the {settings.name} fine-tuning step')

    from clu import metric_writers
    writer = metric_writers.create_default_writer(
        os.fspath(workdir / 'tensorboard'), just_logging=jax.process_index() > 0)

    def run_evaluation(step: int) -> dict[str, float]:
        run = Run(config, task_model, state.params, mesh, rules, config.train.eval_batch_size,
                  workdir, step)
        results = {k: float(v) for k, v in task.evaluate(run, eval_set, train_set).items()}
        # eval/<task>/<metric>: the retrieval task's tags are the evaluator's (train, evaluate).
        writer.write_scalars(step, summaries.prefixed(f'{summaries.EVAL}{settings.name}/',
                                                      results))
        writer.write_images(step, {f'{summaries.EVAL}{settings.name}/{k}': v[None]
                                   for k, v in run.images.items()})
        logging.info('step %d evaluation: %s', step, results)
        return results

    # ---- loop ----------------------------------------------------------------------------------
    total, history, results = config.train.total_steps, [], {}
    from clu import periodic_actions
    progress = periodic_actions.ReportProgress(  # steps/s and ETA, logged and written
        num_train_steps=total, writer=writer, every_steps=config.train.log_every, every_secs=None)
    window = summaries.WindowAverage()  # each metric's mean over the logging window
    with partitioning.sharding_context(mesh, rules):
        for step in range(total):
            state, metrics = step_fn(state, batch, rng)
            window.add(metrics)
            progress(step + 1)
            last = step + 1 == total
            if not last:
                batch = next(batches)
            if (step + 1) % config.train.log_every == 0 or last:
                metrics = window.result()
                window.reset()
                bad = sorted(k for k, v in metrics.items() if not np.isfinite(v))
                if bad:
                    raise FloatingPointError(f'Non-finite {bad} at fine-tuning step {step + 1}.')
                writer.write_scalars(step + 1, summaries.prefixed(
                    summaries.TRAIN, summaries.with_itm_prior(metrics)))
                history.append({'step': step + 1, **metrics})
                logging.info('step %d/%d: loss %.4f', step + 1, total, metrics['loss'])
            if last or (config.train.eval_every and (step + 1) % config.train.eval_every == 0):
                results = run_evaluation(step + 1)
    writer.flush()

    # ---- save ----------------------------------------------------------------------------------
    saved = (save_params(workdir, config, state.params, mesh, rules, location,
                         train_set.label_names)
             if config.train.save_params else None)
    init_step = location.step if location else 0
    directory = os.fspath(location.tree) if location else None
    out = {'task': settings.name, 'init': directory, 'init_step': init_step, 'steps': total,
           'trainable': config.train.trainable, 'train': history, 'eval': results,
           'params_directory': saved,
           'config': json.loads(config.to_json_best_effort())}
    path = workdir / RESULTS
    if jax.process_index() == 0:
        paths.write_json(path, out)
    origin = f'{directory} (step {init_step})' if directory else 'random initialisation'
    print(f'Fine-tuned {settings.name} for {total} steps from {origin} '
          f'({config.train.trainable} trained):\n{format_table(results)}\nResults: {path}'
          + (f'\nParameters: {saved}' if saved else ''))
    return {**out, 'params': state.params}


def main(argv):
    del argv
    config = flags.FLAGS.config
    compilation.enable_cache(config.train.get('compilation_cache_dir', ''))
    try:
        finetune(config, flags.FLAGS.workdir, flags.FLAGS.init)
    except (checkpoint.CheckpointError, FileNotFoundError) as e:  # one line: path and cause
        sys.exit(f'FATAL {e}')


def run():
    """The program (``python -m xfm_jax.finetune`` and the console script): flags, then main.
    Flags are defined here, not at import, so that modules and tests may import this one."""
    config_flags.DEFINE_config_file('config', None, 'configs/finetune/<task>.py[:tiny]',
                                    lock_config=True)
    flags.DEFINE_string('workdir', None, 'Metrics and TensorBoard go here.')
    flags.DEFINE_string('init', None, 'Pre-trained parameters: a pre-training workdir, an Orbax '
                        'step directory, or a converted checkpoint directory.')
    flags.mark_flags_as_required(['config', 'workdir'])
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
    run()
