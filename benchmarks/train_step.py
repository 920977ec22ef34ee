r"""Benchmark of the jitted train step on synthetic batches (needs only jax, flax, optax,
ml_collections: runs on accelerator machines without TensorFlow).

    python benchmarks/train_step.py --config=configs/xfm_base.py:tiny --dtypes=float32,bfloat16
    python benchmarks/train_step.py --config=configs/xfm_base.py --config.model.dtype=bfloat16 \
        --batch_scale=0.25 --steps=10

Prints compile time, the memory XLA plans per device (``--steps=0`` stops there), step time,
examples/s per stream, analytic model FLOPs per step and MFU against the device's peak
(accelerators: PEAK_FLOPS table; CPU: a fp32 matmul measured here in the same run).
"""

from __future__ import annotations

import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from xfm_jax import flops as flops_lib  # noqa: E402
from xfm_jax import partitioning, streams, train_step as ts  # noqa: E402
from xfm_jax.models.model import build_model  # noqa: E402



def synthetic_streams(config, scale: float, names, seed: int = 0):
    """{stream: numpy batch} and {stream: sizes} from config.batch."""
    rng = np.random.default_rng(seed)
    vision, text = config.model.vision, config.model.text
    batches, sizes = {}, {}
    for stream in names:
        size = streams.batch_shape(config, stream)
        size['batch'] = max(1, int(size['batch'] * scale))
        batches[stream] = streams.synthetic_batch(
            stream, rng, vocab_size=text.vocab_size, pad_id=text.pad_id, mask_id=text.mask_id,
            num_masked_patches=config.objectives.mim.num_masked, image_size=vision.image_size,
            patch_size=vision.patch_size, **size)
        sizes[stream] = size
    return batches, sizes


def main(argv):
    del argv
    config = flags.FLAGS.config
    for dtype in flags.FLAGS.dtypes or [config.model.dtype]:
        config.model.dtype = dtype  # parameters stay in model.param_dtype
        benchmark(config)


def benchmark(config):
    """Compiles and times the step of ``config``; prints the figures."""
    names = flags.FLAGS.streams or [s for s in streams.STREAMS if s in config.streams]
    mesh = partitioning.make_mesh(config.partitioning.mesh)
    rules = partitioning.get_rules(config.partitioning.rules)
    model = build_model(config.model)
    tx, schedule = ts.make_optimizer(config)
    batches, sizes = synthetic_streams(config, flags.FLAGS.batch_scale, names)
    device = jax.devices()[0]
    print(f'devices: {jax.device_count()} x {device.device_kind}; mesh {dict(mesh.shape)}; '
          f'rules {config.partitioning.rules}; dtype {config.model.dtype}')
    print('batch: ' + ', '.join(f'{s}={v["batch"]}' for s, v in sizes.items()))

    # Init outside the rules context: DenseGeneral boxes its flat kernel before reshaping.
    setup = partitioning.setup_state(functools.partial(ts.create_train_state, model, tx), mesh,
                                     rules)
    state, state_sh = setup.state, setup.shardings
    with partitioning.sharding_context(mesh, rules):
        batch = partitioning.shard_batch(batches, mesh)
        step = ts.make_train_step(model, config, tx, schedule,
                                  partitioning.num_batch_shards(mesh))
        step = ts.jit_train_step(step, state_sh, partitioning.batch_sharding(mesh))
        rng = jax.random.key(1)
        start = time.perf_counter()
        compiled = step.lower(state, batch, rng).compile()
        compile_s = time.perf_counter() - start
        print(f'compile: {compile_s:.1f} s', flush=True)
        memory = compiled.memory_analysis()
        if memory is not None:  # what XLA plans per device: arguments (state + batch), temporaries
            print(f'memory/device: arguments {memory.argument_size_in_bytes / 1e9:.2f} GB, '
                  f'temporaries {memory.temp_size_in_bytes / 1e9:.2f} GB '
                  f'(model.remat_policy={config.model.remat_policy!r})', flush=True)
        if not flags.FLAGS.steps:
            return
        state, metrics = compiled(state, batch, rng)
        jax.block_until_ready(metrics)
        times, cpu_times = [], []
        for _ in range(flags.FLAGS.steps):
            start, cpu_start = time.perf_counter(), time.process_time()
            state, metrics = compiled(state, batch, rng)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)

    step_s = float(np.median(times))
    model_flops = flops_lib.train_step_flops(config, sizes)
    xla_flops = (compiled.cost_analysis() or {}).get('flops')
    peak = flops_lib.peak_flops_for(device.device_kind)
    peak_source = f'{device.device_kind} bf16 dense peak'
    if peak is None:
        peak = flops_lib.measure_cpu_matmul_peak()
        peak_source = 'fp32 matmul measured now on this CPU'
    peak_total = peak * jax.device_count() if peak_source.endswith('peak') else peak
    achieved = model_flops['total'] / step_s
    # CPU seconds per step barely move when other programs share the cores; on an accelerator
    # they are the host's share only.
    print(f'step: {step_s * 1e3:.1f} ms (median of {len(times)}; CPU time '
          f'{np.median(cpu_times):.2f} s/step), loss {float(metrics["loss"]):.4f}; '
          f'load average {os.getloadavg()[0]:.1f}')
    for stream, size in sizes.items():
        print(f'  {stream:<11} {size["batch"] / step_s:10.1f} examples/s  '
              f'{model_flops[stream] / 1e9:12.2f} GFLOP/step')
    print(f'model FLOPs/step: {model_flops["total"] / 1e9:.2f} GFLOP (analytic, 3x forward)'
          + (f'; XLA cost analysis: {xla_flops / 1e9:.2f} GFLOP' if xla_flops else ''))
    print(f'achieved: {achieved / 1e12:.3f} TFLOP/s; peak {peak_total / 1e12:.3f} TFLOP/s '
          f'({peak_source}); MFU {100 * achieved / peak_total:.1f}%')


if __name__ == '__main__':
    # Flags are defined only when run as a script: tests import synthetic_streams from here.
    config_flags.DEFINE_config_file('config', None, 'Run config.', lock_config=True)
    flags.DEFINE_integer('steps', 5, 'Timed steps (after one warm-up step); 0: compile, print '
                         'the planned memory, stop.')
    flags.DEFINE_float('batch_scale', 1.0, 'Multiplies every stream batch size of config.batch.')
    flags.DEFINE_list('streams', None, 'Subset of streams (default: config.streams).')
    flags.DEFINE_list('dtypes', None, 'Compute dtypes to benchmark one after the other, e.g. '
                      'float32,bfloat16 (default: config.model.dtype).')
    flags.mark_flag_as_required('config')
    app.run(main)
