"""Checkpoints that protect and describe themselves (xfm_jax.checkpoint), on tiny array trees:
a damaged newest step falls back to the previous one, one run per workdir, keep >= 1, a failed
save is one line naming path and cause, and every step carries its run config and vocabulary."""

import base64
import json
import logging
import os
import shutil
import socket
import subprocess

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from xfm_jax import checkpoint


def _config(tmp_path, **checkpoint_settings):
    vocab = tmp_path / 'vocab.txt'
    vocab.write_text('[PAD]\n[UNK]\nhello\n')
    return ml_collections.ConfigDict(dict(
        model=dict(family='xfm', width=4),
        data=dict(vocab=dict(kind='wordpiece', path=str(vocab), merges_path='')),
        checkpoint=dict(dict(every_steps=1, keep=3, keep_every=0, async_save=False,
                             save_on_sigterm=False, lock_stale_seconds=600),
                        **checkpoint_settings)))


def _state(value):
    return {'w': jnp.full((4, 8), float(value)), 'b': jnp.arange(3.0) + value}


def _target():
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    state = _state(0)
    return (jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state),
            jax.tree.map(lambda x: sharding, state))


def _saved(tmp_path, steps=(1, 2)):
    manager = checkpoint.Checkpoints(tmp_path / 'checkpoints', _config(tmp_path))
    for step in steps:
        manager.save(step, _state(step), {'consumed': step})
    manager.wait()
    return manager


def _data_files(directory):
    """The array-data files of an Orbax item (OCDBT keeps its b-tree and array bytes in d/)."""
    return [os.path.join(d, f) for d, _, names in os.walk(directory) for f in names
            if os.path.basename(d) == 'd']


@pytest.mark.parametrize('damage', ['truncated', 'missing', 'data_state'])
def test_damaged_newest_step_falls_back_to_the_previous(tmp_path, caplog, damage):
    _saved(tmp_path).close()
    step_dir = tmp_path / 'checkpoints' / '2'
    if damage == 'truncated':
        for path in _data_files(step_dir / 'state'):  # a save cut short mid-write
            with open(path, 'r+b') as f:
                f.truncate(os.path.getsize(path) // 2)
    elif damage == 'missing':
        for path in _data_files(step_dir / 'state'):
            os.remove(path)
    else:
        (step_dir / 'data' / 'metadata').write_text('{"consumed": ')
    manager = checkpoint.Checkpoints(tmp_path / 'checkpoints', _config(tmp_path))
    with caplog.at_level(logging.ERROR):
        state, data = manager.restore_latest(*_target())
    np.testing.assert_array_equal(state['w'], np.full((4, 8), 1.0))
    assert data == {'consumed': 1}
    assert 'checkpoint step 2 in' in caplog.text and 'is damaged' in caplog.text
    assert manager.latest_step() == 1
    assert [p.name for p in (tmp_path / 'checkpoints').iterdir()
            if p.name.startswith('damaged_2_')]  # kept aside for inspection, not deleted
    manager.save(2, _state(20), {'consumed': 20})  # the step can be written again
    manager.wait()
    assert manager.latest_step() == 2


def test_every_step_describes_its_run(tmp_path, monkeypatch):
    monkeypatch.setenv('XFM_CACHE_DIR', str(tmp_path / 'cache'))
    _saved(tmp_path, steps=(5,)).close()
    location = checkpoint.locate(tmp_path)  # the workdir names its newest step
    assert (location.step, location.kind, location.family) == (5, 'train', 'xfm')
    assert location.description['config']['model'] == {'family': 'xfm', 'width': 4}
    stored = location.description['vocab']['path']
    assert base64.b64decode(stored['base64']) == b'[PAD]\n[UNK]\nhello\n'
    (tmp_path / 'vocab.txt').unlink()  # the checkpoint works without the original file
    config = checkpoint.stored_config(location.description)
    assert config.data.vocab.path.startswith(str(tmp_path / 'cache'))
    with open(config.data.vocab.path) as f:
        assert f.read() == '[PAD]\n[UNK]\nhello\n'
    other = ml_collections.ConfigDict(dict(model=dict(family='x2vlm', width=9, dtype='bf16'),
                                           data=dict(vocab=dict(path='/elsewhere'))))
    adopted = checkpoint.adopt_stored_model(other, location.description, keep=('dtype',))
    assert adopted.model.to_dict() == {'family': 'xfm', 'width': 4, 'dtype': 'bf16'}
    assert adopted.data.vocab.path == config.data.vocab.path


def test_keep_must_be_at_least_one(tmp_path):
    with pytest.raises(ValueError, match=r'checkpoint.keep=0 must be >= 1'):
        checkpoint.Checkpoints(tmp_path / 'checkpoints', _config(tmp_path, keep=0))


def _lock(tmp_path, holder):
    (tmp_path / 'LOCK').write_text(json.dumps(holder))
    return checkpoint.WorkdirLock(checkpoint.paths.resolve(tmp_path), stale_seconds=600)


def test_a_held_workdir_is_refused_and_a_stale_lock_taken_over(tmp_path, caplog):
    host = socket.gethostname()
    live = subprocess.Popen(['sleep', '60'])
    try:
        with pytest.raises(checkpoint.CheckpointError,
                           match=f'in use by process {live.pid} on {host}'):
            _lock(tmp_path, {'host': host, 'pid': live.pid, 'time': 0}).acquire()
        with pytest.raises(checkpoint.CheckpointError, match='in use by process 7 on tpu-w-3'):
            _lock(tmp_path, {'host': 'tpu-w-3', 'pid': 7, 'time': 1e12}).acquire()
    finally:
        live.kill()
        live.wait()
    for holder, why in (({'host': host, 'pid': live.pid, 'time': 0}, 'has ended'),
                        ({'host': 'tpu-w-3', 'pid': 7, 'time': 0}, 'no heartbeat from tpu-w-3')):
        lock = _lock(tmp_path, holder)
        with caplog.at_level(logging.WARNING):
            lock.acquire()
        assert why in caplog.text
        assert json.loads((tmp_path / 'LOCK').read_text())['pid'] == os.getpid()
        lock.release()
        assert not (tmp_path / 'LOCK').exists()


def test_a_failed_save_is_one_line_naming_path_and_cause(tmp_path):
    manager = checkpoint.Checkpoints(tmp_path / 'checkpoints', _config(tmp_path))
    shutil.rmtree(tmp_path / 'checkpoints')
    (tmp_path / 'checkpoints').write_text('not a directory')
    with pytest.raises(checkpoint.CheckpointError) as error:
        manager.save(1, _state(1), {})
        manager.wait()
    message = str(error.value)
    assert '\n' not in message
    assert f'saving step 1 to {tmp_path / "checkpoints"} failed' in message
    assert 'Error' in message  # the cause's type, e.g. NotADirectoryError / FileExistsError


def test_disk_full_names_the_cause(tmp_path):
    """A real ENOSPC: a 256 KiB tmpfs (needs root; skipped where mounting is not allowed)."""
    mount = tmp_path / 'small'
    mount.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', str(mount)],
                      capture_output=True).returncode:
        pytest.skip('cannot mount a tmpfs here')
    try:
        manager = checkpoint.Checkpoints(mount / 'checkpoints', _config(tmp_path))
        with pytest.raises(checkpoint.CheckpointError, match='No space left on device'):
            noise = np.random.default_rng(0).standard_normal((512, 1024), np.float32)
            manager.save(1, {'w': jnp.asarray(noise)}, {})  # 2 MiB, incompressible
            manager.wait()
    finally:
        subprocess.run(['umount', '-l', str(mount)])


def test_params_as_numpy_for_export(tmp_path):
    """What `convert --export` reads from a training step: params and the stored model config;
    non-finite params are refused by name."""
    manager = checkpoint.Checkpoints(tmp_path / 'checkpoints', _config(tmp_path))
    state = {'params': {'tower': {'w': jnp.arange(6.0).reshape(2, 3)}}, 'opt': jnp.zeros(4)}
    manager.save(3, state, {})
    broken = {'params': {'tower': {'w': jnp.full((2, 3), jnp.nan)}}, 'opt': jnp.zeros(4)}
    manager.save(4, broken, {})
    manager.wait()
    params, model, location = checkpoint.read_params_numpy(tmp_path / 'checkpoints' / '3')
    assert isinstance(params['tower']['w'], np.ndarray)
    np.testing.assert_array_equal(params['tower']['w'], np.arange(6.0).reshape(2, 3))
    assert model == {'family': 'xfm', 'width': 4} and location.step == 3
    with pytest.raises(ValueError, match=r'non-finite values \(NaN/Inf\) in 1 parameter\(s\): '
                                         r'tower/w'):
        checkpoint.read_params_numpy(tmp_path)  # the newest step: 4
