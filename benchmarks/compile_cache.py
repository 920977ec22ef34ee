r"""Restart cost with and without the persistent compilation cache: runs the training program
twice on a fresh workdir (a first start, then a restart that resumes), once with
``train.compilation_cache_dir`` pointing at an empty directory and once with the cache off, and
prints the seconds the train step's compile took (the program's own 'compiled the train step in
X s' line) and each run's wall time.

    python benchmarks/compile_cache.py [--config=configs/xfm_base.py:tiny] [--steps=2] \
        [--override=--config.model.scan_layers=True ...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_program(config: str, workdir: str, cache: str, steps: int, overrides: list[str]):
    """(compile seconds, wall seconds) of one run of xfm_jax.train."""
    env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
    env.setdefault('JAX_PLATFORMS', 'cpu')
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, '-m', 'xfm_jax.train', f'--config={config}', f'--workdir={workdir}',
         f'--config.train.total_steps={steps}', f'--config.train.compilation_cache_dir={cache}',
         '--config.optimizer.warmup_steps=1', *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        sys.exit(f'xfm_jax.train failed:\n{result.stderr[-3000:]}')
    found = re.search(r'compiled the train step in ([\d.]+) s', result.stderr)
    if not found:
        sys.exit(f'no compile line in the log:\n{result.stderr[-3000:]}')
    return float(found[1]), wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', default='configs/xfm_base.py:tiny')
    parser.add_argument('--steps', type=int, default=2, help='steps of the first run; the '
                        'restart runs one more')
    parser.add_argument('--override', action='append', default=[],
                        help='a --config.* override for every run (repeatable)')
    args = parser.parse_args()
    print(f'config {args.config} {" ".join(args.override)}; load average '
          f'{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs')
    print(f'{"cache":<8} {"run":<8} {"compile s":>10} {"wall s":>8}')
    with tempfile.TemporaryDirectory() as tmp:
        for label, cache in (('on', os.path.join(tmp, 'cache')), ('off', '')):
            workdir = os.path.join(tmp, f'run_{label}')
            for run, steps in (('first', args.steps), ('restart', args.steps + 1)):
                compile_s, wall = run_program(args.config, workdir, cache, steps, args.override)
                print(f'{label:<8} {run:<8} {compile_s:10.2f} {wall:8.1f}', flush=True)


if __name__ == '__main__':
    main()
