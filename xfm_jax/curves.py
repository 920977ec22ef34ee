r"""A training run's learning curves, drawn from its TensorBoard events into ``WORKDIR/curves.png``:
the training losses per objective, held-out retrieval R@1 and grounding accuracy over the steps
(beside retrieval's chance), and each stream's ITM loss beside its prior. ``xfm_jax.train`` draws
it at the end of a run; by hand (during a run too):

    python -m xfm_jax.curves --workdir=runs/quickstart

Tags are those of ``xfm_jax.summaries``; a step written twice (a resumed run repeats the steps
after its last checkpoint) keeps its last value.
"""

from __future__ import annotations

import io
import os
import re

from absl import app, flags
import numpy as np

from xfm_jax import paths, summaries

CURVES_FILE = 'curves.png'
OBJECTIVE_LOSS = re.compile(r'^train/(\w+)/(\w+)_loss$')  # train/<stream>/<objective>_loss
RETRIEVAL_R1 = ('itc/t2i_r1', 'itc/i2t_r1', 'itm/t2i_r1', 'itm/i2t_r1')
# Held-out percentages drawn beside retrieval R@1 when a run evaluates them during training.
EVALUATION_PERCENT = {'grounding/accuracy': 'grounding acc@IoU0.5'}


def _written_order(path) -> tuple[int, int, str]:
    """events.out.tfevents.<seconds>.<host>.<pid>.<counter>.v2: by time, then the counter of
    the writing process (two writers of one second)."""
    parts = path.name.split('.')
    counter = parts[-2] if parts[-1] == 'v2' else parts[-1]
    return int(parts[3]), int(counter) if counter.isdigit() else 0, path.name


def read_scalars(logdir) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar in the event files of ``logdir`` (local or gs://),
    read in the order the files were written."""
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.util import tensor_util
    out: dict[str, dict[int, float]] = {}
    files = sorted(paths.glob(paths.resolve(logdir) / 'events.out.tfevents.*'),
                   key=_written_order)
    for path in files:
        for event in event_file_loader.EventFileLoader(os.fspath(path)).Load():
            for value in event.summary.value:
                if value.HasField('tensor'):
                    array = tensor_util.make_ndarray(value.tensor)
                elif value.HasField('simple_value'):
                    array = np.asarray(value.simple_value)
                else:
                    continue
                if array.size == 1 and array.dtype.kind in 'fiu':  # images and text are not
                    out.setdefault(value.tag, {})[int(event.step)] = float(array.reshape(()))
    return out


def _series(scalars, tag):
    points = sorted(scalars.get(tag, {}).items())
    return [s for s, _ in points], [v for _, v in points]


def evaluation_series(scalars) -> list[tuple[str, str]]:
    """(label, tag) of each held-out percentage the run logged, in drawing order: retrieval
    R@1 per model and direction, then grounding accuracy."""
    tags = [(metric, f'{summaries.EVAL}retrieval/{metric}') for metric in RETRIEVAL_R1]
    tags += [(label, f'{summaries.EVAL}{name}') for name, label in EVALUATION_PERCENT.items()]
    return [(label, tag) for label, tag in tags if tag in scalars]


def draw(workdir) -> str:
    """Draws the curves of the run in ``workdir`` to ``workdir/curves.png``; returns its path."""
    from matplotlib.figure import Figure
    workdir = paths.resolve(workdir)
    scalars = read_scalars(workdir / 'tensorboard')
    figure = Figure(figsize=(15, 4.2), layout='constrained')
    losses, retrieval, itm = figure.subplots(1, 3)

    losses.set_title('training losses (mean per logging window)')
    objectives = sorted(t for t in scalars if OBJECTIVE_LOSS.match(t) and '_prior_' not in t)
    for tag in ['train/loss'] + objectives:
        if tag in scalars:
            losses.plot(*_series(scalars, tag), label=tag[len(summaries.TRAIN):],
                        linewidth=2.5 if tag == 'train/loss' else 1.2)

    retrieval.set_title('held-out retrieval R@1 and grounding (%)')
    for label, tag in evaluation_series(scalars):
        retrieval.plot(*_series(scalars, tag), marker='o', label=label)
    chance = f'{summaries.EVAL}retrieval/chance/t2i_r1'
    if chance in scalars:
        retrieval.axhline(list(scalars[chance].values())[-1], color='grey', linestyle=':',
                          label='chance (t2i)')

    itm.set_title('ITM loss and its prior')
    for tag in sorted(t for t in scalars if t.startswith(summaries.TRAIN)
                      and t.endswith('itm_loss')):
        name = tag[len(summaries.TRAIN):]
        line, = itm.plot(*_series(scalars, tag), label=name)
        prior = tag[:-len('loss')] + 'prior_loss'
        if prior in scalars:
            itm.plot(*_series(scalars, prior), color=line.get_color(), linestyle='--',
                     label=f'{name[:-len("loss")]}prior_loss')

    for axes in (losses, retrieval, itm):
        axes.set_xlabel('step')
        if axes.has_data():
            axes.legend(fontsize=6, ncol=2 if axes is losses else 1)
        else:
            axes.text(0.5, 0.5, 'not logged', ha='center', va='center',
                      transform=axes.transAxes)
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=80)
    target = workdir / CURVES_FILE  # local or gs://
    target.write_bytes(buffer.getvalue())
    return os.fspath(target)


def main(argv):
    del argv
    print(draw(flags.FLAGS.workdir))


if __name__ == '__main__':
    flags.DEFINE_string('workdir', None, 'A training workdir (its tensorboard/ is read).')
    flags.mark_flags_as_required(['workdir'])
    app.run(main)
