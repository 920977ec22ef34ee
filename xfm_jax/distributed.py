"""Joins the processes of a multi-host run (``jax.distributed.initialize``) before jax is used.

Where the settings come from, first match wins:

1. ``XFM_COORDINATOR_ADDRESS`` (host:port of process 0), ``XFM_NUM_PROCESSES``, ``XFM_PROCESS_ID``:
   explicit, for any cluster (all three or none).
2. SLURM with ``SLURM_NTASKS`` > 1: one process per task, launched with ``srun``; jax reads the
   job's node list and gives task ``SLURM_LOCALID`` the GPU of that index.
3. A multi-worker TPU VM slice (or several slices): jax reads the workers from the TPU metadata.
4. Otherwise one process: nothing to do.
"""

from __future__ import annotations

import glob
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping

from absl import logging
import jax

EXPLICIT_VARS = ('XFM_COORDINATOR_ADDRESS', 'XFM_NUM_PROCESSES', 'XFM_PROCESS_ID')
# What jax's SLURM detection reads; SLURM_STEP_NODELIST exists only inside an srun step.
SLURM_VARS = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
              'SLURM_LOCALID')
_TPU_METADATA = ('http://metadata.google.internal/computeMetadata/v1/instance/attributes/'
                 'worker-network-endpoints')


def _int_var(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f'{name}={env[name]!r} is not an integer.') from None


def tpu_worker_count(env: Mapping[str, str]) -> int:
    """Workers (hosts) of this TPU VM slice; 0 on a machine without TPU chips."""
    if not (glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*')):
        return 0
    if hostnames := env.get('TPU_WORKER_HOSTNAMES'):  # GKE sets it; so may a user
        return len(hostnames.split(','))
    request = urllib.request.Request(_TPU_METADATA, headers={'Metadata-Flavor': 'Google'})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return len(response.read().decode().split(','))
    except urllib.error.URLError as e:
        raise RuntimeError(
            f'This machine has TPU chips but the TPU metadata server is unreachable ({e}); set '
            f'TPU_WORKER_HOSTNAMES (comma-separated workers) or {", ".join(EXPLICIT_VARS)}.'
        ) from e


def plan(env: Mapping[str, str], tpu_workers: Callable[[Mapping[str, str]], int]) -> dict | None:
    """Keyword arguments for ``jax.distributed.initialize``, or None for a single process.

    ``tpu_workers(env)`` counts the TPU VM workers (:func:`tpu_worker_count`); it is asked last
    because it may query the metadata server.
    """
    explicit = [name for name in EXPLICIT_VARS if env.get(name)]
    if explicit:
        missing = [name for name in EXPLICIT_VARS if name not in explicit]
        if missing:
            raise ValueError(f'{", ".join(explicit)} set but {", ".join(missing)} not: set all of '
                             f'{", ".join(EXPLICIT_VARS)} for an explicit multi-process run.')
        num_processes = _int_var(env, 'XFM_NUM_PROCESSES')
        process_id = _int_var(env, 'XFM_PROCESS_ID')
        if not 0 <= process_id < num_processes:
            raise ValueError(f'XFM_PROCESS_ID={process_id} must be in [0, XFM_NUM_PROCESSES='
                             f'{num_processes}).')
        if num_processes == 1:
            return None
        return dict(coordinator_address=env['XFM_COORDINATOR_ADDRESS'],
                    num_processes=num_processes, process_id=process_id)
    if env.get('SLURM_NTASKS') and _int_var(env, 'SLURM_NTASKS') > 1:
        missing = [name for name in SLURM_VARS if not env.get(name)]
        if missing:
            raise ValueError(f'SLURM_NTASKS={env["SLURM_NTASKS"]} but {", ".join(missing)} not '
                             f'set: start every task with srun (see launch/gpu_slurm.sbatch).')
        return dict(cluster_detection_method='slurm')
    slices = _int_var(env, 'MEGASCALE_NUM_SLICES') if env.get('MEGASCALE_NUM_SLICES') else 1
    if slices * tpu_workers(env) > 1:
        return {}  # jax reads coordinator, process count and id from the TPU metadata
    return None


def initialize() -> None:
    """Calls ``jax.distributed.initialize`` when this is one process of several; see the module
    docstring. Call it first thing in a program, before any other jax call."""
    kwargs = plan(os.environ, tpu_worker_count)
    if kwargs is None:
        return
    jax.distributed.initialize(**kwargs)
    logging.info('process %d of %d; %d local of %d devices', jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
