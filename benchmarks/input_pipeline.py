r"""Input-pipeline throughput: examples/s per stream (and per CPU core) at 224 px, full augmentation.

    python benchmarks/input_pipeline.py [--family=xfm|x2vlm] [--batches=20]
    python benchmarks/input_pipeline.py --resume_at=1000000   # restore time at record N
    python benchmarks/input_pipeline.py --eval_images=20000   # evaluation-read peak memory

Uses the 'synthetic' data preset (xfm_synthetic/scenes_224: 256 px JPEGs; built on first run)
with RandomResizedCrop + flip + RandAugment(2, 7), uint8 pixels (normalised on the device),
tokenisation, MLM and MIM masks. Target: >= 250 image-text examples/s per core. Streams are
timed one at a time.

Two per-core figures: wall-clock examples/s divided by the cores (what a dedicated machine
gives), and examples per CPU-second this process used (all threads; barely moved by other
programs competing for the cores, so comparable across runs on a shared machine). The load
average printed with them says how busy the machine was.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from configs import data as data_configs, x2vlm_base, xfm_base  # noqa: E402
from xfm_jax.data import pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--family', default='x2vlm', choices=['xfm', 'x2vlm'])
    parser.add_argument('--batches', type=int, default=20)
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--resume_at', type=int, default=None,
                        help='time the restore at this record instead of the throughput')
    parser.add_argument('--eval_images', type=int, default=0,
                        help="measure the evaluation reader's peak memory over N images")
    args = parser.parse_args()
    model = (xfm_base if args.family == 'xfm' else x2vlm_base).get_config('').model
    config = data_configs.data_config('synthetic', model)
    if args.resume_at is not None:
        resume(config, args.resume_at, args.batch_size)
        return
    if args.eval_images:
        eval_memory(args.eval_images, args.batch_size)
        return
    cores = os.cpu_count()
    for stream in list(config.streams):
        single = data_configs.data_config('synthetic', model)
        single.streams = {stream: dict(single.streams[stream].to_dict(),
                                       batch_size=args.batch_size)}
        streams = pipeline.make_streams(single, seed=0)
        for _ in range(3):  # warm-up: graph tracing, first shuffle-buffer fill
            batch = next(streams)
        megabytes = sum(x.nbytes for x in jax.tree.leaves(batch)) / 2**20
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(args.batches):
            next(streams)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        streams.close()
        examples = args.batches * args.batch_size
        rate = examples / seconds
        print(f'{stream:>10}: {rate:8.1f} examples/s  = {rate / cores:7.1f} per core '
              f'({cores} cores, 224 px); {examples / cpu_seconds:7.1f} per CPU-second; '
              f'{megabytes:.1f} MiB per batch; load average {os.getloadavg()[0]:.1f}', flush=True)


def resume(config, position: int, batch_size: int) -> None:
    task = 'xfm_synthetic_scenes_224_image_text'
    config.streams = {'image_text': dict(config.streams.image_text.to_dict(), mixture=[(task, 1.0)],
                                         batch_size=batch_size)}
    state = {'seed': 0, 'process_count': 1, 'streams': {'image_text': {
        'position': [position], 'tasks': {task: [position]}, 'dropped': {}}}}
    pipeline.make_streams(config, seed=0).close()  # builds the data set outside the timing
    start = time.perf_counter()
    streams = pipeline.make_streams(config, seed=0, state=state)
    next(streams)
    seconds = time.perf_counter() - start
    streams.close()
    print(f'resume_at={position}: {seconds:.2f} s from construction to the first batch '
          f'(batch {batch_size}); load average {os.getloadavg()[0]:.1f}', flush=True)


def eval_memory(num_images: int, batch_size: int) -> None:
    import ml_collections
    import numpy as np

    from xfm_jax.data import tasks
    from xfm_jax.data.builders import synthetic
    from xfm_jax.evaluators import data as eval_data
    name = f'scenes_memory_{num_images}'
    tasks.SOURCES[name] = tasks.Source(synthetic.__name__, 'xfm_synthetic', 'image_text', kwargs=(
        ('config', synthetic.SyntheticConfig(name=name, kind='scenes', image_size=64,
                                             num_examples=num_images)),))
    model = x2vlm_base.get_config('').model
    config = ml_collections.ConfigDict({'model': model,
                                        'data': data_configs.data_config('synthetic', model)})
    tasks.load_builder(tasks.SOURCES[name], config.data.tfds_data_dir)  # built outside the peak
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    images = eval_data.load(config, name, 'train').images
    embeddings = np.concatenate([
        images[np.arange(i, min(i + batch_size, len(images)))].mean((1, 2))
        for i in range(0, len(images), batch_size)])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f'eval_images={len(embeddings)} at {images.item_shape[0]} px (batch {batch_size}): '
          f'peak RSS {peak / 2**20:.2f} GiB (before reading {before / 2**20:.2f} GiB); '
          f'{time.perf_counter() - start:.0f} s; a whole float32 split would be '
          f'{len(images) * np.prod(images.item_shape) * 4 / 2**30:.1f} GiB', flush=True)


if __name__ == '__main__':
    main()
