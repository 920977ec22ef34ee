"""The job runner of the launch/ tables (downstream_table.py, claims.py).

A job is one ``python -m xfm_jax.{train,evaluate,finetune}`` command with a workdir of its own
(the command printed before it runs, its output in ``WORKDIR/log.txt``). A job whose result file
exists is read back instead of run again, so an interrupted table resumes where it stopped;
an interrupted pre-training run resumes from its newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import time

from etils import epath

from xfm_jax import paths

FASHION = 'fashion_mnist'
METRICS_FILE = 'metrics.json'  # xfm_jax.train writes it when a run has finished
FINETUNE_FILE = 'finetune.json'  # xfm_jax.finetune's output, final metrics under 'eval'


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    kind: str  # 'train' | 'evaluate' | 'finetune'
    config: str
    flags: tuple[str, ...] = ()
    needs: str = ''  # an offline set the job reads ('' = synthetic only)


def command(job: Job, init: str | None, workdir: str) -> list[str]:
    """The job's command line. Evaluation and fine-tuning start from ``init`` (a checkpoint or
    pre-training workdir), None = random initialisation; pre-training ignores it."""
    base = [sys.executable, '-m', f'xfm_jax.{job.kind}', f'--config={job.config}',
            f'--workdir={workdir}', *job.flags]
    if job.kind == 'train':
        return base
    if job.kind == 'evaluate':
        return base + ([f'--checkpoint={init}'] if init else ['--random_init'])
    return base + ([f'--init={init}'] if init else [])


def result_metrics(kind: str, workdir: str) -> dict | None:
    """The metrics a finished job wrote, or None. Pre-training: the held-out evaluation of its
    final parameters, once the run has finished."""
    workdir = paths.resolve(workdir)
    if kind == 'finetune':
        path = workdir / FINETUNE_FILE
        return paths.read_json(path)['eval'] if path.exists() else None
    if kind == 'train' and not (workdir / METRICS_FILE).exists():
        return None
    found = paths.glob(workdir / 'eval_step*.json')
    if not found:
        return None
    newest = max(found, key=lambda p: int(p.name[len('eval_step'):-len('.json')]))
    return paths.read_json(newest)['metrics']


def missing_set(name: str) -> str | None:
    """Why an offline set cannot be read here, or None when it can."""
    if name == FASHION and not os.path.isdir('/usr/share/datasets/fashion-mnist'):
        return 'not installed: apt-get install dataset-fashion-mnist'
    if name == 'easy_vqa':
        try:
            import easy_vqa  # noqa: F401
        except ImportError:
            return 'not installed: pip install easy-vqa'
    return None


def execute(cmd: list[str], log: epath.Path) -> int:
    """Runs ``cmd``, its output streamed into ``log`` (local or gs://); the exit code."""
    with log.open('w') as out, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            out.write(line)
    return proc.returncode


def run_job(job: Job, init: str | None, workdir: str, label: str = '') -> dict | None:
    """The job's metrics: read back when it finished before, else after running it; None when
    it failed (its log says why)."""
    label = label or job.name
    metrics = result_metrics(job.kind, workdir)
    if metrics is not None:
        print(f'[{label}] done before: {workdir}', flush=True)
        return metrics
    directory = paths.resolve(workdir)
    directory.mkdir(parents=True, exist_ok=True)
    cmd = command(job, init, workdir)
    print(f'[{label}] {shlex.join(cmd[1:])}', flush=True)
    start = time.time()
    code = execute(cmd, directory / 'log.txt')
    print(f'[{label}] exit {code} after {time.time() - start:.0f} s '
          f'(log: {directory / "log.txt"})', flush=True)
    return result_metrics(job.kind, workdir) if code == 0 else None
