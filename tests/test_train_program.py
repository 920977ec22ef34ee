"""The training program as it is run: ``python -m xfm_jax.train`` in subprocesses, stopped by
SIGTERM, killed by SIGKILL, split over two processes, and given bad overrides.

Every run trains the cheap config of test_train.py (written to a config file) on 8 simulated
CPU devices; a compilation cache shared by this module's runs compiles each device layout once.
Runs save at every step (``checkpoint.every_steps=1``), which paces the steps so that a signal
sent once the first checkpoint exists lands mid-run.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from test_train import _config, _params
from xfm_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 6
# Two processes compiling on 2 cores took 160 s alone and passed 300 s under a load of 3-4.
TIMEOUT_S = 600

CONFIG_FILE = '''
from test_train import _config


def get_config(total_steps):
    return _config(int(total_steps))
'''


@pytest.fixture(scope='module')
def start(tmp_path_factory):
    """``start(workdir, *overrides, processes=1) -> [Popen]``: the program on 8 devices in all,
    each process logging to ``workdir/log{i}.txt``."""
    shared = tmp_path_factory.mktemp('program')
    (shared / 'tiny_train.py').write_text(CONFIG_FILE)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.abspath(__file__)),
               JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
               JAX_COMPILATION_CACHE_DIR=str(shared / 'compilation_cache'),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
    for name in ('XFM_COORDINATOR_ADDRESS', 'XFM_NUM_PROCESSES', 'XFM_PROCESS_ID'):
        env.pop(name, None)

    def run(workdir, *overrides, processes=1):
        os.makedirs(workdir, exist_ok=True)
        with socket.socket() as s:  # a free port for the coordinator of several processes
            s.bind(('localhost', 0))
            port = s.getsockname()[1]
        procs = []
        for i in range(processes):
            process_env = dict(env, XLA_FLAGS='--xla_force_host_platform_device_count='
                               f'{8 // processes}')
            if processes > 1:
                process_env.update(XFM_COORDINATOR_ADDRESS=f'localhost:{port}',
                                   XFM_NUM_PROCESSES=str(processes), XFM_PROCESS_ID=str(i))
            with open(os.path.join(workdir, f'log{i}.txt'), 'w') as log:
                procs.append(subprocess.Popen(
                    [sys.executable, '-m', 'xfm_jax.train',
                     f'--config={shared / "tiny_train.py"}:{TOTAL_STEPS}', f'--workdir={workdir}',
                     '--config.checkpoint.every_steps=1', *overrides],
                    cwd=ROOT, env=process_env, stdout=log, stderr=subprocess.STDOUT))
        return procs

    return run


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """(final metrics, final params as numpy) of an uninterrupted in-process run."""
    workdir = str(tmp_path_factory.mktemp('reference'))
    metrics = train.train(_config(TOTAL_STEPS), workdir)
    return metrics, [np.asarray(x) for x in
                     jax.tree.leaves(_params(workdir, _config(TOTAL_STEPS)).params)]


def _steps(workdir):
    """Complete checkpoint steps: Orbax renames a step's temporary directory when it is done."""
    directory = os.path.join(workdir, 'checkpoints')
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _wait_for_checkpoint(workdir, procs):
    deadline = time.monotonic() + TIMEOUT_S
    while not (os.path.isdir(os.path.join(workdir, 'checkpoints')) and _steps(workdir)):
        assert all(p.poll() is None for p in procs), _logs(workdir, procs)
        assert time.monotonic() < deadline, 'no checkpoint written'
        time.sleep(0.05)


def _logs(workdir, procs):
    return [open(os.path.join(workdir, f'log{i}.txt')).read() for i in range(len(procs))]


def _finish(workdir, procs):
    """Waits for every process to exit with status 0; returns their logs."""
    codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
    logs = _logs(workdir, procs)
    assert codes == [0] * len(procs), f'exit codes {codes}:\n' + '\n'.join(
        _failure_lines(i, log) for i, log in enumerate(logs))
    return logs


def _failure_lines(i, log):
    """A log's error lines wherever they are (a fatal abort ends with Python's module list,
    which would fill a plain tail) and its last lines."""
    errors = [line[:400] for line in log.splitlines()
              if re.search(r'Error|Traceback|^F\d{4}|Check fail|DEADLINE|timed out', line)]
    return f'--- log{i}.txt: error lines\n' + '\n'.join(errors[:40]) + \
        f'\n--- log{i}.txt: tail\n' + log[-1500:]


def _assert_final_params(workdir, reference):
    params = jax.tree.leaves(_params(workdir, _config(TOTAL_STEPS)).params)
    assert len(params) == len(reference[1])
    for got, want in zip(params, reference[1]):
        np.testing.assert_array_equal(np.asarray(got), want)


def test_sigterm_saves_the_current_step_and_a_restart_completes_the_run(start, reference,
                                                                        tmp_path):
    workdir = str(tmp_path)
    procs = start(workdir)
    _wait_for_checkpoint(workdir, procs)
    procs[0].send_signal(signal.SIGTERM)
    [log] = _finish(workdir, procs)
    stopped = int(re.search(r'preempted: saved step (\d+)', log)[1])
    assert 1 < stopped < TOTAL_STEPS and _steps(workdir)[-1] == stopped

    # A resume takes the run's own checkpoint: init_from (a path that does not exist) is unread.
    [log] = _finish(workdir, start(workdir, '--config.train.init_from=/nonexistent'))
    assert f'restoring step {stopped}' in log
    _assert_final_params(workdir, reference)
    with open(os.path.join(workdir, train.METRICS_FILE)) as f:
        assert json.load(f) == {'step': TOTAL_STEPS, 'metrics': reference[0]}


@pytest.mark.slow
def test_sigkill_during_async_saves_resumes_from_the_last_complete_step(start, reference,
                                                                        tmp_path):
    """A real SIGKILL while saves run in the background (one per step), plus the remains of a
    save cut short planted the way Orbax names them (a kill rarely lands mid-rename on a tiny
    state): the restart restores the newest complete step and removes the remains."""
    workdir = str(tmp_path)
    procs = start(workdir, '--config.checkpoint.async_save=True')
    _wait_for_checkpoint(workdir, procs)
    procs[0].kill()
    procs[0].wait(timeout=TIMEOUT_S)
    complete = _steps(workdir)
    assert complete[-1] < TOTAL_STEPS
    partial = os.path.join(workdir, 'checkpoints',
                           f'{complete[-1] + 1}.orbax-checkpoint-tmp-1700000000000000')
    os.makedirs(os.path.join(partial, 'state'))
    with open(os.path.join(partial, 'state', 'manifest.ocdbt'), 'wb') as f:
        f.write(b'truncated')

    [log] = _finish(workdir, start(workdir))
    assert f'restoring step {complete[-1]}' in log
    assert not os.path.exists(partial)
    _assert_final_params(workdir, reference)


@pytest.mark.slow
def test_two_processes_stop_at_one_step_and_train_like_one(start, reference, tmp_path):
    """Two processes of 4 devices each (jax.distributed on localhost). SIGTERM reaches only
    process 1; both save the same step and exit. The resumed pair ends with the metrics of one
    process on 8 devices; only process 0 writes metrics and TensorBoard files."""
    workdir = str(tmp_path)
    procs = start(workdir, processes=2)
    _wait_for_checkpoint(workdir, procs)
    procs[1].send_signal(signal.SIGTERM)
    logs = _finish(workdir, procs)
    stopped = {int(re.search(r'preempted: saved step (\d+)', log)[1]) for log in logs}
    assert len(stopped) == 1 and _steps(workdir)[-1] == stopped.pop() < TOTAL_STEPS

    # The resumed pair: each process waits for the other's compile before its first step (one
    # that hit the compilation cache once reached the step's collectives 50 s early and the CPU
    # collectives gave up after 30 s).
    for log in _finish(workdir, start(workdir, processes=2)):
        assert 'all 2 processes reached train_step_compiled' in log
    with open(os.path.join(workdir, train.METRICS_FILE)) as f:
        saved = json.load(f)
    assert saved['step'] == TOTAL_STEPS and saved['metrics'].keys() == reference[0].keys()
    for key, value in reference[0].items():  # cross-process sums may round differently
        np.testing.assert_allclose(saved['metrics'][key], value, rtol=1e-5, err_msg=key)
    events = os.listdir(os.path.join(workdir, 'tensorboard'))
    assert len(events) == 2, events  # one file per launch, from process 0 only


@pytest.mark.parametrize('override, message', [
    ('--config.train.nonexistent=1', "unknown config key 'nonexistent' in "
                                     '--config.train.nonexistent=1'),
    ('--config.train.total_steps=abc', 'flag --config.train.total_steps=abc: invalid literal'),
])
def test_bad_override_fails_at_once_naming_the_key(override, message, tmp_path):
    result = subprocess.run(
        [sys.executable, '-m', 'xfm_jax.train', '--config=configs/xfm_base.py:tiny',
         f'--workdir={tmp_path}', override],
        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
        timeout=60)
    assert result.returncode != 0
    assert message in result.stderr
    assert not os.listdir(tmp_path)
