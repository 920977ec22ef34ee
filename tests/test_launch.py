"""Launching: the multi-process decision of xfm_jax.distributed (and a real two-process run on
localhost), and the TPU pod / SLURM scripts' commands, quoting and error messages."""

import os
import socket
import subprocess
import sys

import jax
import pytest

from tests.conftest import ROOT
from xfm_jax import distributed

SLURM_ENV = dict(SLURM_JOB_ID='42', SLURM_STEP_NODELIST='node[1-2]', SLURM_NTASKS='16',
                 SLURM_PROCID='3', SLURM_LOCALID='3')
EXPLICIT_ENV = dict(XFM_COORDINATOR_ADDRESS='10.0.0.1:1234', XFM_NUM_PROCESSES='4',
                    XFM_PROCESS_ID='2')
LAUNCH_VARS = (*distributed.EXPLICIT_VARS, *distributed.SLURM_VARS)


def no_cluster(env):
    return None


def cluster_of(n):
    return lambda env: ('SomeCluster', n)


# ---- distributed: which processes join, and how -----------------------------------------------

def test_single_process_is_a_no_op():
    assert distributed.plan({}, no_cluster) is None
    assert distributed.plan(dict(SLURM_ENV, SLURM_NTASKS='1'), cluster_of(1)) is None
    assert distributed.plan(dict(EXPLICIT_ENV, XFM_NUM_PROCESSES='1', XFM_PROCESS_ID='0'),
                            no_cluster) is None
    assert distributed.plan({}, cluster_of(1)) is None  # a single-host TPU VM
    assert distributed.detected_cluster() is None  # this machine: no cluster at all


def test_explicit_settings_win_over_slurm_and_tpu():
    assert distributed.plan({**SLURM_ENV, **EXPLICIT_ENV}, cluster_of(4)) == dict(
        coordinator_address='10.0.0.1:1234', num_processes=4, process_id=2)


@pytest.mark.parametrize('unset, named', [
    (('XFM_NUM_PROCESSES',), 'XFM_NUM_PROCESSES'),
    (('XFM_COORDINATOR_ADDRESS', 'XFM_PROCESS_ID'), 'XFM_COORDINATOR_ADDRESS, XFM_PROCESS_ID'),
])
def test_explicit_settings_must_be_complete(unset, named):
    env = {k: v for k, v in EXPLICIT_ENV.items() if k not in unset}
    with pytest.raises(ValueError, match=f'but {named} not'):
        distributed.plan(env, no_cluster)


@pytest.mark.parametrize('update, message', [
    (dict(XFM_NUM_PROCESSES='four'), "XFM_NUM_PROCESSES='four' is not an integer"),
    (dict(XFM_PROCESS_ID='4'), r'XFM_PROCESS_ID=4 must be in \[0, XFM_NUM_PROCESSES=4\)'),
])
def test_explicit_settings_are_checked(update, message):
    with pytest.raises(ValueError, match=message):
        distributed.plan({**EXPLICIT_ENV, **update}, no_cluster)


def test_slurm_is_detected_by_jax(monkeypatch):
    for name, value in SLURM_ENV.items():
        monkeypatch.setenv(name, value)
    assert distributed.detected_cluster() == ('SlurmCluster', 16)  # jax's own detection
    assert distributed.plan(SLURM_ENV) == {}


def test_slurm_outside_srun_names_the_missing_variable():
    env = {k: v for k, v in SLURM_ENV.items() if k != 'SLURM_STEP_NODELIST'}
    with pytest.raises(ValueError, match='SLURM_NTASKS=16 but SLURM_STEP_NODELIST not set.*srun'):
        distributed.plan(env, no_cluster)


def test_detected_clusters_and_jax_variables_use_jax_detection():
    assert distributed.plan({}, cluster_of(4)) == {}  # a TPU pod, Open MPI, Kubernetes ...
    assert distributed.plan(dict(JAX_COORDINATOR_ADDRESS='10.0.0.1:1234'), no_cluster) == {}


def test_initialize_calls_jax_only_for_several_processes(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, 'initialize', lambda **kwargs: calls.append(kwargs))
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    distributed.initialize()
    assert calls == []
    for name, value in EXPLICIT_ENV.items():
        monkeypatch.setenv(name, value)
    distributed.initialize()
    assert calls == [dict(coordinator_address='10.0.0.1:1234', num_processes=4, process_id=2)]

_WORKER = '''
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from xfm_jax import distributed
distributed.initialize()
mesh = jax.make_mesh((jax.device_count(),), ('data',))
rows = np.arange(64, dtype=np.float32).reshape(8, 8)
mine = rows[4 * jax.process_index():4 * (jax.process_index() + 1)]
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P('data')), mine)
total = jax.jit(lambda x: (x * x).sum(), out_shardings=NamedSharding(mesh, P()))(x)
print('RESULT', jax.process_count(), jax.local_device_count(), jax.device_count(), float(total))
'''


def test_two_processes_compute_one_sharded_sum():
    """Two processes of 4 CPU devices each, joined through the XFM_* variables, compute the sum of
    squares of 0..63 over an 8-device mesh: 63 * 64 * 127 / 6 = 85344, as one process does."""
    with socket.socket() as s:
        s.bind(('localhost', 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu',
               PYTHONPATH=ROOT, XFM_COORDINATOR_ADDRESS=f'localhost:{port}', XFM_NUM_PROCESSES='2')
    workers = [subprocess.Popen([sys.executable, '-c', _WORKER], cwd=ROOT, text=True,
                                env=dict(env, XFM_PROCESS_ID=str(i)),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for i in range(2)]
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    for output in outputs:
        assert 'RESULT 2 4 8 85344.0' in output, output

    mesh = jax.make_mesh((8,), ('data',))  # this process: 8 devices (tests/conftest.py)
    x = jax.device_put(jax.numpy.arange(64.0).reshape(8, 8),
                       jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data')))
    assert float(jax.jit(lambda x: (x * x).sum())(x)) == 85344.0


# ---- launch scripts ----------------------------------------------------------------------------

TPU_SETTINGS = ['--project=my-project', '--zone=us-east5-a', '--name=xfm-pod',
                '--accelerator-type=v5p-16', '--topology=v5p:2x2x2',
                '--runtime-version=v2-alpha-tpuv5', '--config=configs/xfm_base.py']
AWKWARD = '--config.data.root=/mnt/my data/it\'s "quoted" $HOME;`true`'


def run_script(script, *args, env=None):
    return subprocess.run(['bash', os.path.join(ROOT, 'launch', script), *args], text=True,
                          capture_output=True, env={'PATH': os.environ['PATH'], **(env or {})},
                          cwd=ROOT, timeout=60)


def shell_words(line):
    """The argument list bash reads from one printed command line."""
    out = subprocess.run(['bash', '-c', 'eval "words=($1)"; printf "%s\\0" "${words[@]}"', '_',
                          line], capture_output=True, text=True, check=True).stdout
    return out.split('\0')[:-1]


@pytest.mark.parametrize('script', ['tpu_pod.sh', 'tpu_setup.sh', 'gpu_slurm.sbatch'])
def test_scripts_parse(script):
    subprocess.run(['bash', '-n', os.path.join(ROOT, 'launch', script)], check=True)


def test_tpu_pod_dry_run_prints_every_command_quoted(tmp_path):
    result = run_script('tpu_pod.sh', '--dry-run', *TPU_SETTINGS, '--spot', AWKWARD,
                        env=dict(XFM_WORKDIR='gs://bucket/runs/x fm'))
    assert result.returncode == 0, result.stderr
    commands = [shell_words(line) for line in result.stdout.splitlines()
                if not line.startswith('#') and '|' not in line]
    where = ['--project=my-project', '--zone=us-east5-a']
    aot, create, scp, setup, train = commands
    assert aot == ['python3', '-m', 'xfm_jax.aot', '--config=configs/xfm_base.py',
                   '--topology=v5p:2x2x2', AWKWARD]
    assert create == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'xfm-pod', *where,
                      '--accelerator-type=v5p-16', '--version=v2-alpha-tpuv5', '--spot']
    assert scp[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp']
    assert scp[6:] == ['xfm-pod:xfm-jax.tar.gz', *where, '--worker=all']
    assert setup[:9] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'xfm-pod', *where,
                         '--worker=all']
    assert setup[9].endswith('bash xfm-jax/launch/tpu_setup.sh')
    assert train[:9] == setup[:9] and train[9].startswith('--command=')
    # Each worker's shell runs the command: here against a stub python that prints its argv.
    stub = tmp_path / 'xfm-jax' / '.venv' / 'bin' / 'python'
    stub.parent.mkdir(parents=True)
    stub.write_text('#!/bin/sh\nprintf "%s\\0" "$@"\n')
    stub.chmod(0o755)
    remote = subprocess.run(['bash', '-c', train[9][len('--command='):]], cwd=tmp_path,
                            capture_output=True, text=True, check=True).stdout
    assert remote.split('\0')[:-1] == [
        '-m', 'xfm_jax.train', '--config=configs/xfm_base.py', '--workdir=gs://bucket/runs/x fm',
        '--config.train.compilation_cache_dir=gs://bucket/runs/x fm/compilation_cache', AWKWARD]


def test_tpu_pod_names_missing_settings():
    result = run_script('tpu_pod.sh', '--dry-run', *TPU_SETTINGS[1:5])
    assert result.returncode == 2
    assert result.stderr.strip() == (
        'tpu_pod.sh: missing settings: --project (or XFM_TPU_PROJECT), '
        '--runtime-version (or XFM_TPU_RUNTIME_VERSION), --config (or XFM_CONFIG), '
        '--workdir (or XFM_WORKDIR)')
    result = run_script('tpu_pod.sh', '--dry-run', '--workdir=w', '--zone-typo=x')
    assert result.returncode == 2 and "unknown argument '--zone-typo=x'" in result.stderr
    result = run_script('tpu_pod.sh', '--dry-run', *TPU_SETTINGS, '--workdir=runs/xfm')
    assert result.returncode == 2
    assert "--workdir='runs/xfm' must be a gs:// location" in result.stderr


def test_slurm_script_needs_sbatch_and_its_arguments():
    result = run_script('gpu_slurm.sbatch', '--config=configs/xfm_base.py')
    assert result.returncode == 2 and 'SLURM_JOB_ID is not set' in result.stderr
    result = run_script('gpu_slurm.sbatch', '--config=configs/xfm_base.py',
                        '--config.train.seed=1', env=dict(SLURM_JOB_ID='7'))
    assert result.returncode == 2 and 'missing --workdir' in result.stderr
