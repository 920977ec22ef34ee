r"""Ahead-of-time compile of the real train step for a TPU topology, on any machine (even a CPU).

    python -m xfm_jax.aot --config=configs/xfm_base.py --topology=v5p:2x2x2 \
        [--config.model.dtype=bfloat16 ...]

Builds the mesh over the topology's (compile-only) devices, the abstract train state and batch with
their shardings, compiles the jitted step exactly as ``xfm_jax.train`` does, and prints per-device
memory against the chip's HBM and XLA's FLOP count next to ``xfm_jax.flops``. Exits with status 1
when the step does not fit (by the report, or because the TPU compiler runs out of HBM), so launch
scripts can refuse the config before renting the pod.

Needs libtpu (``pip install "jax[tpu]==0.10.2"``, which works on a machine without TPUs).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time

from absl import app, flags
import jax
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import config_flags

from xfm_jax import flops as flops_lib
from xfm_jax import partitioning, streams, train_step as ts
from xfm_jax.models.model import build_model

GIB = 2 ** 30
# HBM per chip, which is per jax device: v4 and v5p chips hold two TensorCores that jax drives as
# one device ('megacore'); v5e and v6e chips have one.
HBM_GIB = {'v4': 32, 'v5e': 16, 'v5p': 95, 'v6e': 32}
_CHIP_CONFIG = {'v4': 'megacore', 'v5p': 'megacore', 'v5e': 'default', 'v6e': 'default'}


@dataclasses.dataclass(frozen=True)
class Report:
    """Per-device memory of the compiled step (bytes) and FLOPs per step."""
    topology: str
    num_devices: int
    mesh: dict
    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs written into donated arguments (the state): counted once
    temp_bytes: int
    code_bytes: int
    hbm_bytes: int
    xla_flops_per_device: float | None
    model_flops: int  # analytic, whole step over all devices (xfm_jax.flops)
    compile_s: float

    @property
    def total_bytes(self) -> int:
        return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
                + self.code_bytes)

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.hbm_bytes

    def table(self) -> str:
        rows = [('arguments (state + batch)', self.argument_bytes),
                ('outputs', self.output_bytes),
                ('  of which aliased to donated arguments', -self.alias_bytes),
                ('temporaries (activations, gradients)', self.temp_bytes),
                ('generated code', self.code_bytes),
                ('total', self.total_bytes),
                (f'HBM of one {self.topology.split(":")[0]} chip', self.hbm_bytes)]
        lines = [f'topology {self.topology}: {self.num_devices} devices, mesh {self.mesh}, '
                 f'compiled in {self.compile_s:.1f} s', 'per-device memory:']
        lines += [f'  {name:<42} {value / GIB:9.3f} GiB' for name, value in rows]
        lines.append(f'  {"fits" if self.fits else "DOES NOT FIT"}: '
                     f'{100 * self.total_bytes / self.hbm_bytes:.1f}% of HBM')
        lines.append(f'model FLOPs/step (analytic, all devices): '
                     f'{self.model_flops / 1e9:,.2f} GFLOP')
        if self.xla_flops_per_device is not None:
            xla_total = self.xla_flops_per_device * self.num_devices
            lines.append(f'XLA cost analysis: {self.xla_flops_per_device / 1e9:,.2f} GFLOP per '
                         f'device, {xla_total / 1e9:,.2f} GFLOP on all devices '
                         f'({xla_total / self.model_flops:.2f}x analytic; XLA also counts '
                         f'elementwise ops and rematerialisation)')
        return '\n'.join(lines)


def topology_devices(topology: str) -> list:
    """Compile-only devices of ``topology`` ('<generation>:<chip grid>', e.g. 'v5p:2x2x2')."""
    generation, _, grid = topology.partition(':')
    if generation not in HBM_GIB or not grid:
        raise ValueError(f'--topology={topology!r}: expected <generation>:<chip grid> with a '
                         f'generation in {sorted(HBM_GIB)}, e.g. v5p:2x2x2 or v5e:4x4.')
    # Compiling needs no chips: skip the GCE metadata query for a TPU this machine may not have,
    # and let several processes (parallel tests, a training job on this host) load libtpu.
    os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    from jax.experimental import topologies
    return topologies.get_topology_desc(platform='tpu', topology_name=topology,
                                        chip_config_name=_CHIP_CONFIG[generation]).devices


def stream_sizes(config: ml_collections.ConfigDict) -> dict[str, dict[str, int]]:
    """{stream: global batch and the sizes its fields read} of the trained streams."""
    return {stream: streams.batch_shape(config, stream)
            for stream in streams.STREAMS if stream in config.streams}


def compile_report(config: ml_collections.ConfigDict, topology: str) -> Report:
    """Compiles the train step for ``topology`` and measures it; see the module docstring."""
    devices = topology_devices(topology)
    mesh = partitioning.make_mesh(config.partitioning.mesh, devices)
    rules = partitioning.get_rules(config.partitioning.rules)
    model = build_model(config.model)
    tx, schedule = ts.make_optimizer(config)
    # The sharded-state setup of training, up to its shardings: nothing is allocated.
    boxed, state_sh = partitioning.abstract_state(
        functools.partial(ts.create_train_state, model, tx), mesh, rules)
    state = partitioning.placed_shapes(boxed, state_sh)
    batch_sh = partitioning.batch_sharding(mesh)
    sizes = stream_sizes(config)
    vision = config.model.vision
    batch = {stream: {name: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sh)
                      for name, (shape, dtype) in streams.field_specs(
                          stream, image_size=vision.image_size, patch_size=vision.patch_size,
                          **size).items()}
             for stream, size in sizes.items()}
    key = jax.eval_shape(jax.random.key, 0)
    rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(mesh, P()))

    step = ts.jit_train_step(ts.make_train_step(model, config, tx, schedule), state_sh, batch_sh)
    start = time.perf_counter()
    with partitioning.sharding_context(mesh, rules):
        compiled = step.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - start

    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    return Report(
        topology=topology, num_devices=len(devices), mesh=dict(mesh.shape),
        argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
        code_bytes=memory.generated_code_size_in_bytes,
        hbm_bytes=HBM_GIB[topology.split(':')[0]] * GIB,
        xla_flops_per_device=cost.get('flops'),
        model_flops=flops_lib.train_step_flops(config, sizes)['total'], compile_s=compile_s)


def check(config: ml_collections.ConfigDict, topology: str) -> int:
    """Prints the report; returns the exit status: 0 when the step fits, 1 when it does not."""
    try:
        report = compile_report(config, topology)
    except jax.errors.JaxRuntimeError as e:
        # The TPU compiler itself refuses a program whose buffers exceed HBM.
        if 'RESOURCE_EXHAUSTED' not in str(e):
            raise
        print(f'topology {topology}: DOES NOT FIT, the compiler ran out of HBM:\n  {e}')
        return 1
    print(report.table())
    return 0 if report.fits else 1


def main(argv):
    del argv
    sys.exit(check(flags.FLAGS.config, flags.FLAGS.topology))


def run():
    """The program (``python -m xfm_jax.aot`` and the console script): flags, then main.
    Flags are defined here, not at import, so that modules and tests may import this one."""
    config_flags.DEFINE_config_file('config', None, 'Run config (configs/*.py[:preset]).',
                                    lock_config=True)
    flags.DEFINE_string('topology', None,
                        'TPU generation and chip grid, e.g. v5p:2x2x2, v4:2x2x4, v5e:4x4.')
    flags.mark_flags_as_required(['config', 'topology'])
    from xfm_jax import cli
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
    run()
