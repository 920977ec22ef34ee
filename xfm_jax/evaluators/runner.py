"""Runs the configured evaluators on a set of parameters and records their metrics; shared by
the evaluation program and the end of a training run.

Each evaluator's metrics are written (``WORKDIR/eval_step{step}.json``, TensorBoard
``eval/<evaluator>/<metric>``, its galleries as images ``eval/<evaluator>/<gallery>``) as soon as
it finishes, so a later failure never loses finished
results. An evaluator whose data source lacks what it needs (labels, boxes) is skipped with a
warning naming the source.
"""

from __future__ import annotations

import os
import time

from absl import logging
import jax

from xfm_jax import evaluators, paths, summaries
from xfm_jax.evaluators import batching


def run_evaluators(config, params, mesh, rules, *, workdir: str | None = None, step: int = 0,
                   checkpoint: str = '', names: str | None = None,
                   writer=None) -> dict[str, float]:
    """Runs the evaluators ``names`` (comma-separated; default ``config.evaluate.evaluators``)
    on ``params`` (sharded on ``mesh``); returns ``{'<evaluator>/<metric>': value}``, written
    to ``workdir`` after every evaluator when given. Evaluators may draw galleries: PNGs in
    ``workdir`` and TensorBoard images ``eval/<evaluator>/<gallery>``. ``writer``: the caller's
    clu metric writer (default: one on ``workdir/tensorboard``)."""
    from xfm_jax.models.model import build_model
    settings = config.evaluate if 'evaluate' in config else evaluators.evaluate_config(
        video=bool(config.model.video_frames))
    names = evaluators.check_names(  # unknown names fail before anything runs
        settings.evaluators if names is None else names, settings,
        'config.evaluate.evaluators' if names is None else 'the evaluator list')
    ctx = batching.EvalContext(model=build_model(config.model), params=params, mesh=mesh,
                               rules=rules, config=config, batch_size=settings.batch_size,
                               workdir=os.fspath(paths.resolve(workdir)) if workdir else None,
                               step=step)
    if workdir and writer is None:
        from clu import metric_writers
        writer = metric_writers.create_default_writer(
            os.fspath(paths.resolve(workdir) / 'tensorboard'),
            just_logging=jax.process_index() > 0)
    results = {}
    for name in names:
        start = time.perf_counter()
        try:
            metrics = evaluators.get(name)(ctx, settings[name])
        except evaluators.SourceLacks as e:
            logging.warning('evaluator %s skipped: %s', name, e)
            continue
        logging.info('%s: %.1f s', name, time.perf_counter() - start)
        metrics = {f'{name}/{k}': float(v) for k, v in metrics.items()}
        results.update(metrics)
        if workdir:  # at once: a later evaluator's failure loses nothing
            if jax.process_index() == 0:
                paths.write_json(results_path(workdir, step),
                                 {'step': step, 'checkpoint': checkpoint, 'metrics': results})
            writer.write_scalars(step, summaries.prefixed(summaries.EVAL, metrics))
            writer.write_images(step, {f'{summaries.EVAL}{name}/{k}': v[None]
                                       for k, v in ctx.images.items()})
            writer.flush()
        ctx.images.clear()
    if workdir and not results and jax.process_index() == 0:  # every evaluator was skipped
        paths.write_json(results_path(workdir, step),
                         {'step': step, 'checkpoint': checkpoint, 'metrics': results})
    return results


def format_table(results: dict[str, float]) -> str:
    width = max(map(len, results), default=0)
    return '\n'.join(f'{k:<{width}}  {v:10.3f}' for k, v in sorted(results.items()))


def results_path(workdir, step: int):
    """Where :func:`run_evaluators` writes the metrics of ``step``."""
    return paths.resolve(workdir) / f'eval_step{step}.json'
