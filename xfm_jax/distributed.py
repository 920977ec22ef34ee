"""Joins the processes of a multi-host run (``jax.distributed.initialize``) before jax is used.

jax's own cluster detection decides (Cloud TPU VMs and multislice, SLURM, Open MPI, Kubernetes,
and jax's ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``); the
explicit ``XFM_COORDINATOR_ADDRESS`` (host:port of process 0), ``XFM_NUM_PROCESSES`` and
``XFM_PROCESS_ID`` (all three or none) override it for any other cluster. One process (no cluster,
or a cluster of one) initialises nothing. ``barrier`` lines the processes up where their paths
may diverge in time (one host compiles while another reads the compilation cache).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

from absl import logging
import jax

EXPLICIT_VARS = ('XFM_COORDINATOR_ADDRESS', 'XFM_NUM_PROCESSES', 'XFM_PROCESS_ID')
# What jax's SLURM detection reads; SLURM_STEP_NODELIST exists only inside an srun step.
SLURM_VARS = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
              'SLURM_LOCALID')


def _int_var(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f'{name}={env[name]!r} is not an integer.') from None


def detected_cluster(env: Mapping[str, str] | None = None) -> tuple[str, int] | None:
    """(name, process count) of the cluster jax's own detection finds (the environments
    ``jax.distributed.initialize()`` reads when called without arguments), or None. ``env`` is
    unused: jax reads ``os.environ`` and the TPU metadata server itself."""
    del env
    from jax._src.clusters import ClusterEnv  # jax's registry of cluster environments
    for cluster in ClusterEnv._cluster_types:
        if not cluster.opt_in_only_method and cluster.is_env_present():
            return cluster.__name__, int(cluster.get_process_count())
    return None


def plan(env: Mapping[str, str],
         cluster: Callable[[Mapping[str, str]], tuple[str, int] | None] = detected_cluster
         ) -> dict | None:
    """Keyword arguments for ``jax.distributed.initialize``, or None for a single process.

    ``cluster(env)``: the cluster jax detects (:func:`detected_cluster`); asked last, because on
    a TPU VM it queries the metadata server.
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
    if env.get('JAX_COORDINATOR_ADDRESS'):
        return {}  # jax reads its own variables
    if env.get('SLURM_NTASKS') and _int_var(env, 'SLURM_NTASKS') > 1:
        missing = [name for name in SLURM_VARS if not env.get(name)]
        if missing:
            raise ValueError(f'SLURM_NTASKS={env["SLURM_NTASKS"]} but {", ".join(missing)} not '
                             f'set: start every task with srun (see launch/gpu_slurm.sbatch).')
    found = cluster(env)
    if found is not None and found[1] > 1:
        logging.info('jax detects a %s cluster of %d processes', *found)
        return {}  # jax reads coordinator, process count and id from the cluster
    return None


def initialize() -> None:
    """Calls ``jax.distributed.initialize`` when this is one process of several; see the module
    docstring. Call it first thing in a program, before any other jax call."""
    kwargs = plan(os.environ)
    if kwargs is None:
        return
    jax.distributed.initialize(**kwargs)
    logging.info('process %d of %d; %d local of %d devices', jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Waits until every process has reached ``name`` (a coordination-service barrier: no
    collective, so no device work waits on it); returns at once for one process.

    Before the first step, a process that read the compilation cache must not reach the step's
    collectives minutes ahead of one that compiles: collective back-ends give up on a peer
    sooner (jax's CPU collectives after 30 s) than a compile takes.
    """
    if jax.process_count() == 1:
        return
    from orbax.checkpoint import multihost  # the coordination client's barrier, as Orbax uses it
    start = time.perf_counter()
    multihost.get_barrier_sync_fn()(key=f'xfm_jax/{name}', timeout_ms=timeout_s * 1000)
    logging.info('all %d processes reached %s (waited %.1f s)', jax.process_count(), name,
                 time.perf_counter() - start)
