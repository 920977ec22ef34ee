"""Every storage library of the project writes to and reads from the local GCS emulator
(xfm_jax.gcs_emulator): what a test writes must appear as objects on the server, read back equal.

In this process TensorFlow is installed, so etils.epath (and with it Orbax's directory work, TFDS,
the jax compilation cache) goes through tf.io.gfile; the subprocess test runs the path a TPU host
without TensorFlow takes (EPATH_USE_TF=false: epath on gcsfs).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xfm_jax import gcs_emulator, paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _prefix(gcs_bucket, uri: str) -> str:
    """The object-name prefix of a ``gs://<bucket>/...`` folder, with a trailing '/'."""
    return uri.removeprefix(f'{gcs_bucket.uri}/') + '/'


def test_tls_proxy_refuses_foreign_hosts(gcs_bucket):
    proxy = gcs_bucket.env['HTTPS_PROXY'].removeprefix('http://')
    host, port = proxy.rsplit(':', 1)
    # The TLS proxy is for TensorFlow's two GCS hosts only: nothing else may leave the machine.
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n')
        assert sock.recv(64).startswith(b'HTTP/1.1 403')


def test_print_env_repeats_the_running_emulators_exports(gcs_bucket):
    port = gcs_bucket.emulator.port
    out = subprocess.run([sys.executable, '-m', 'xfm_jax.gcs_emulator', f'--port={port}',
                          '--print_env'], capture_output=True, text=True, check=True, cwd=ROOT,
                         env=gcs_bucket.subprocess_env()).stdout
    assert out == gcs_bucket.emulator.exports()
    assert f'export TENSORSTORE_GCS_HTTP_URL=http://127.0.0.1:{port}\n' in out


def test_a_bad_bucket_name_fails_the_start_with_the_servers_reason():
    with pytest.raises(RuntimeError, match="cannot create bucket 'b': 400 .*invalid bucket name"):
        with gcs_emulator.running(buckets=['b']):
            pass


_KILLED_PARENT = r'''
import os, sys, time
from xfm_jax import gcs_emulator
with gcs_emulator.running(buckets=['xfm-orphan']) as emulator:
    print(emulator.port, flush=True)
    time.sleep(300)
'''


def test_emulator_stops_when_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, '-c', _KILLED_PARENT], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE,
                              env={**os.environ, 'PYTHONPATH': ROOT})
    port = int(parent.stdout.readline())
    parent.kill()  # SIGKILL: no cleanup code of the parent runs
    parent.wait()
    deadline = time.monotonic() + 10
    while _listening(port):
        assert time.monotonic() < deadline, f'the emulator on port {port} outlived its parent'
        time.sleep(0.1)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(('127.0.0.1', port)) == 0


def test_tf_gfile_write_list_read_delete(gcs_bucket, gcs_dir):
    import tensorflow as tf
    tf.io.gfile.makedirs(f'{gcs_dir}/sub')
    with tf.io.gfile.GFile(f'{gcs_dir}/a.txt', 'w') as f:
        f.write('written by tf.io.gfile')
    prefix = _prefix(gcs_bucket, gcs_dir)
    assert gcs_bucket.list_objects(prefix) == [prefix, f'{prefix}a.txt', f'{prefix}sub/']
    assert gcs_bucket.read_object(f'{prefix}a.txt') == b'written by tf.io.gfile'
    assert sorted(tf.io.gfile.listdir(gcs_dir)) == ['a.txt', 'sub/']
    assert tf.io.gfile.glob(f'{gcs_dir}/*.txt') == [f'{gcs_dir}/a.txt']
    with tf.io.gfile.GFile(f'{gcs_dir}/a.txt', 'rb') as f:
        assert f.read() == b'written by tf.io.gfile'
    tf.io.gfile.rmtree(gcs_dir)
    assert gcs_bucket.list_objects(prefix) == []


def test_epath_through_the_project_path_layer(gcs_bucket, gcs_dir):
    root = paths.resolve(gcs_dir)
    assert os.fspath(root) == gcs_dir
    (root / 'run' / 'ckpt').mkdir(parents=True, exist_ok=True)
    paths.write_json(f'{gcs_dir}/run/config.json', {'steps': 3})
    (root / 'run' / 'log.txt').write_text('step 1\n')
    prefix = _prefix(gcs_bucket, gcs_dir)
    assert f'{prefix}run/config.json' in gcs_bucket.list_objects(prefix)
    assert json.loads(gcs_bucket.read_object(f'{prefix}run/config.json')) == {'steps': 3}
    assert paths.read_json(f'{gcs_dir}/run/config.json') == {'steps': 3}
    assert (root / 'run' / 'log.txt').exists() and not (root / 'run' / 'nothing').exists()
    assert sorted(p.name for p in (root / 'run').iterdir()) == ['ckpt', 'config.json', 'log.txt']
    assert paths.glob(f'{gcs_dir}/run/*.json') == [root / 'run' / 'config.json']
    (root / 'run').rmtree()
    assert gcs_bucket.list_objects(f'{prefix}run/') == []


def test_orbax_checkpointer_save_and_restore(gcs_bucket, gcs_dir):
    import orbax.checkpoint as ocp
    tree = {'w': jnp.arange(12.0).reshape(3, 4), 'b': {'count': jnp.array([7, 8], jnp.int32)}}
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(f'{gcs_dir}/x', tree)
    checkpointer.wait_until_finished()
    prefix = _prefix(gcs_bucket, gcs_dir)
    assert f'{prefix}x/_CHECKPOINT_METADATA' in gcs_bucket.list_objects(prefix)
    restored = checkpointer.restore(f'{gcs_dir}/x',
                                    jax.tree.map(ocp.utils.to_shape_dtype_struct, tree))
    np.testing.assert_array_equal(restored['w'], np.arange(12.0).reshape(3, 4))
    np.testing.assert_array_equal(restored['b']['count'], [7, 8])


def test_orbax_checkpoint_manager_keeps_steps(gcs_bucket, gcs_dir):
    import orbax.checkpoint as ocp
    directory = f'{gcs_dir}/run/checkpoints'
    manager = ocp.CheckpointManager(directory)
    for step in (1, 2):
        manager.save(step, args=ocp.args.StandardSave({'w': jnp.full((4,), float(step))}))
    manager.wait_until_finished()
    prefix = _prefix(gcs_bucket, directory)
    names = gcs_bucket.list_objects(prefix)
    # (Names ending in '/' are the empty folder markers tf.io.gfile leaves.)
    assert {n[len(prefix):].split('/')[0] for n in names if n != prefix} == {'1', '2'}
    # A fresh manager finds the steps on the server, not in its own memory.
    reopened = ocp.CheckpointManager(directory)
    assert reopened.latest_step() == 2 and reopened.all_steps() == [1, 2]
    restored = reopened.restore(1, args=ocp.args.StandardRestore({'w': jnp.zeros((4,))}))
    np.testing.assert_array_equal(restored['w'], [1.0, 1.0, 1.0, 1.0])


def test_tfds_prepares_and_reads_a_dataset_on_gcs(gcs_bucket, gcs_dir):
    import tensorflow_datasets as tfds
    builder = _tiny_builder_class()(data_dir=f'{gcs_dir}/tfds')
    builder.download_and_prepare()
    prefix = _prefix(gcs_bucket, gcs_dir)
    names = gcs_bucket.list_objects(f'{prefix}tfds/xfm_gcs_probe/1.0.0/')
    assert any(n.endswith('/dataset_info.json') for n in names)
    assert any('.tfrecord' in n for n in names)
    # Read back by a reader that knows only the folder, as a training job would.
    reread = tfds.builder_from_directory(f'{gcs_dir}/tfds/xfm_gcs_probe/1.0.0')
    rows = sorted((int(r['id']), r['text'].decode())
                  for r in tfds.as_numpy(reread.as_dataset(split='train')))
    assert rows == [(i, f'caption {i}') for i in range(5)]


_BUILDER = None


def _tiny_builder_class():
    """A five-example TFDS builder, defined once per process (TFDS registers builders by name)."""
    global _BUILDER
    if _BUILDER is None:
        import tensorflow_datasets as tfds

        class XfmGcsProbe(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version('1.0.0')

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                    {'id': np.int64, 'text': tfds.features.Text()}))

            def _split_generators(self, dl_manager):
                return {'train': self._generate_examples()}

            def _generate_examples(self):
                for i in range(5):
                    yield i, {'id': i, 'text': f'caption {i}'}

        _BUILDER = XfmGcsProbe
    return _BUILDER


def test_clu_writer_writes_tensorboard_events_to_gcs(gcs_bucket, gcs_dir):
    import tensorflow as tf
    from clu import metric_writers
    logdir = f'{gcs_dir}/tensorboard'
    writer = metric_writers.create_default_writer(logdir, asynchronous=False)
    writer.write_scalars(3, {'loss': 1.25})
    writer.close()
    events = [n for n in gcs_bucket.list_objects(_prefix(gcs_bucket, logdir)) if 'tfevents' in n]
    assert len(events) == 1
    scalars = [(e.step, v.tag, float(tf.make_ndarray(v.tensor)))
               for e in tf.compat.v1.train.summary_iterator(f'{gcs_bucket.uri}/{events[0]}')
               for v in e.summary.value]
    assert scalars == [(3, 'loss', 1.25)]


def test_jax_compilation_cache_on_gcs(gcs_bucket, gcs_dir, monkeypatch):
    from jax.experimental.compilation_cache import compilation_cache
    from xfm_jax import compilation
    monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)  # the tests' shared cache
    keys = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
            'jax_persistent_cache_min_entry_size_bytes')
    before = {k: getattr(jax.config, k) for k in keys}
    compilation_cache.reset_cache()  # jax opens its cache once per process: open ours
    try:
        compilation.enable_cache(f'{gcs_dir}/jax_cache')
        assert jax.jit(lambda x: x * 3 - 1)(jnp.arange(4.0)).tolist() == [-1.0, 2.0, 5.0, 8.0]
    finally:
        for k, v in before.items():
            jax.config.update(k, v)
        compilation_cache.reset_cache()
    names = gcs_bucket.list_objects(_prefix(gcs_bucket, gcs_dir) + 'jax_cache/')
    assert any(n.endswith('-cache') for n in names), names


# What a TPU host without TensorFlow runs (EPATH_USE_TF=false: etils.epath, so Orbax's
# directories and the jax cache, on gcsfs), in a fresh interpreter because epath picks its backend
# and jax opens its cache once per process. Prints what it saw as JSON.
_WITHOUT_TF = r'''
import json, sys
import jax, jax.numpy as jnp
import orbax.checkpoint as ocp
from xfm_jax import compilation, paths
root = sys.argv[1]
top = paths.resolve(root)
(top / 'files').mkdir(parents=True, exist_ok=True)
(top / 'files' / 'a.txt').write_text('alpha')
report = {'backend': type(top._backend).__name__,
          'read': (top / 'files' / 'a.txt').read_text(),
          'glob': [p.name for p in paths.glob(f'{root}/files/*.txt')]}
manager = ocp.CheckpointManager(f'{root}/checkpoints')
for step in (1, 2):
    manager.save(step, args=ocp.args.StandardSave({'w': jnp.full((3,), float(step))}))
manager.wait_until_finished()
reopened = ocp.CheckpointManager(f'{root}/checkpoints')
report['latest_step'] = reopened.latest_step()
report['restored'] = reopened.restore(1, args=ocp.args.StandardRestore(
    {'w': jnp.zeros((3,))}))['w'].tolist()
compilation.enable_cache(f'{root}/jax_cache')
report['value'] = jax.jit(lambda x: x * 2 + 1)(jnp.arange(4.0)).tolist()
report['tensorflow_imported'] = 'tensorflow' in sys.modules
print(json.dumps(report))
'''


def test_without_tensorflow_epath_orbax_and_jax_cache_use_gcsfs(gcs_bucket, gcs_dir):
    env = {**gcs_bucket.subprocess_env(), 'EPATH_USE_TF': 'false',
           'PYTHONPATH': os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')])}
    env.pop('JAX_COMPILATION_CACHE_DIR', None)  # the tests' shared local cache would win
    result = subprocess.run([sys.executable, '-c', _WITHOUT_TF, gcs_dir], capture_output=True,
                            text=True, cwd=ROOT, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {'backend': '_FileSystemSpecBackend', 'read': 'alpha', 'glob': ['a.txt'],
                      'latest_step': 2, 'restored': [1.0, 1.0, 1.0],
                      'value': [1.0, 3.0, 5.0, 7.0], 'tensorflow_imported': False}
    prefix = _prefix(gcs_bucket, gcs_dir)
    names = gcs_bucket.list_objects(prefix)
    assert gcs_bucket.read_object(f'{prefix}files/a.txt') == b'alpha'
    steps = {n[len(prefix):].split('/')[1] for n in names
             if n.startswith(f'{prefix}checkpoints/') and n != f'{prefix}checkpoints/'}
    assert steps == {'1', '2'}
    assert any(n.startswith(f'{prefix}jax_cache/') and n.endswith('-cache') for n in names), names
