r"""Restart cost with and without the persistent compilation cache: runs the training program
twice on a fresh workdir (a first start, preempted by SIGTERM once its step is compiled, then a
restart that resumes it with the same config), once with
``train.compilation_cache_dir`` pointing at an empty directory and once with the cache off, and
prints the seconds the train step's compile took (the program's own 'compiled the train step in
X s' line) and each run's wall time.

    python benchmarks/compile_cache.py [--config=configs/xfm_base.py:tiny] [--steps=4] \
        [--override=--config.model.scan_layers=True ...]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_program(config: str, workdir: str, cache: str, steps: int, overrides: list[str],
                preempt: bool):
    """(compile seconds, wall seconds) of one run of xfm_jax.train; ``preempt``: SIGTERM as soon
    as the step is compiled, so the run saves and stops like a preempted one and the next run
    (same config: the learning-rate schedule is part of the executable) resumes it."""
    env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
    env.setdefault('JAX_PLATFORMS', 'cpu')
    log_path = os.path.join(workdir + '.log')
    start = time.perf_counter()
    with open(log_path, 'w') as log:
        process = subprocess.Popen(
            [sys.executable, '-m', 'xfm_jax.train', f'--config={config}',
             f'--workdir={workdir}', f'--config.train.total_steps={steps}',
             f'--config.train.compilation_cache_dir={cache}',
             '--config.optimizer.warmup_steps=1', '--config.checkpoint.every_steps=1',
             *overrides], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    pattern = re.compile(r'compiled the train step in ([\d.]+) s')
    while (found := pattern.search(open(log_path).read())) is None:
        if process.poll() is not None:
            sys.exit(f'xfm_jax.train stopped before compiling:\n{open(log_path).read()[-3000:]}')
        time.sleep(0.2)
    if preempt:
        process.send_signal(signal.SIGTERM)
    if process.wait():
        sys.exit(f'xfm_jax.train failed:\n{open(log_path).read()[-3000:]}')
    return float(found[1]), time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', default='configs/xfm_base.py:tiny')
    parser.add_argument('--steps', type=int, default=4, help='total steps: the first run is '
                        'preempted (SIGTERM) once compiled, the restart finishes them')
    parser.add_argument('--override', action='append', default=[],
                        help='a --config.* override for every run (repeatable)')
    args = parser.parse_args()
    print(f'config {args.config} {" ".join(args.override)}; load average '
          f'{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs')
    print(f'{"cache":<8} {"run":<8} {"compile s":>10} {"wall s":>8}')
    with tempfile.TemporaryDirectory() as tmp:
        for label, cache in (('on', os.path.join(tmp, 'cache')), ('off', '')):
            workdir = os.path.join(tmp, f'run_{label}')
            for run, preempt in (('first', True), ('restart', False)):
                compile_s, wall = run_program(args.config, workdir, cache, args.steps,
                                              args.override, preempt)
                print(f'{label:<8} {run:<8} {compile_s:10.2f} {wall:8.1f}', flush=True)


if __name__ == '__main__':
    main()
