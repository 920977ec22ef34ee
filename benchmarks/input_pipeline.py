r"""Input-pipeline throughput: examples/s per stream (and per CPU core) at 224 px, full augmentation.

    python benchmarks/input_pipeline.py [--family=xfm|x2vlm] [--batches=20]

Uses the 'synthetic' data preset (xfm_synthetic/scenes_224: 256 px JPEGs; built on first run)
with RandomResizedCrop + flip + RandAugment(2, 7) + CLIP normalisation, tokenisation, MLM and
MIM masks. Target: >= 250 image-text examples/s per core. Streams are timed one at a time.

Two per-core figures: wall-clock examples/s divided by the cores (what a dedicated machine
gives), and examples per CPU-second this process used (all threads; barely moved by other
programs competing for the cores, so comparable across runs on a shared machine). The load
average printed with them says how busy the machine was.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import data as data_configs, x2vlm_base, xfm_base  # noqa: E402
from xfm_jax.data import pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--family', default='x2vlm', choices=['xfm', 'x2vlm'])
    parser.add_argument('--batches', type=int, default=20)
    parser.add_argument('--batch_size', type=int, default=64)
    args = parser.parse_args()
    model = (xfm_base if args.family == 'xfm' else x2vlm_base).get_config('').model
    config = data_configs.data_config('synthetic', model)
    cores = os.cpu_count()
    for stream in list(config.streams):
        single = data_configs.data_config('synthetic', model)
        single.streams = {stream: dict(single.streams[stream].to_dict(),
                                       batch_size=args.batch_size)}
        streams = pipeline.make_streams(single, seed=0)
        for _ in range(3):  # warm-up: graph tracing, first shuffle-buffer fill
            next(streams)
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(args.batches):
            next(streams)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        streams.close()
        examples = args.batches * args.batch_size
        rate = examples / seconds
        print(f'{stream:>10}: {rate:8.1f} examples/s  = {rate / cores:7.1f} per core '
              f'({cores} cores, 224 px); {examples / cpu_seconds:7.1f} per CPU-second; '
              f'load average {os.getloadavg()[0]:.1f}', flush=True)


if __name__ == '__main__':
    main()
