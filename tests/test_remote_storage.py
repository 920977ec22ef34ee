"""The pod path on ``gs://``, against a real GCS emulator (tests/gcs.py): a tiny run trains to a
bucket, is preempted by SIGTERM, resumes from the bucket bit for bit, is evaluated and
fine-tuned from the bucket, and fine-tuned params go back to it. Every object is checked on the
server, and nothing named ``gs:`` may appear on local disk."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from test_train import _config
from xfm_jax import checkpoint, partitioning, train, train_step as ts
from xfm_jax.models.model import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 5
TIMEOUT_S = 1200  # a loaded 2-core machine compiles slowly
CONFIG_FILE = '''
from test_train import _config


def get_config(total_steps):
    return _config(int(total_steps))
'''


def _step_objects(bucket, prefix):
    """Complete steps under ``prefix``checkpoints/: Orbax writes a commit marker on GCS last."""
    return sorted({int(m[1]) for name in bucket.list_objects(f'{prefix}checkpoints/')
                   if (m := re.fullmatch(rf'{prefix}checkpoints/(\d+)/commit_success.txt',
                                         name))})


def _no_local_gs_directories(*roots):
    for root in roots:
        for directory, names, _ in os.walk(root):
            assert 'gs:' not in names, f'a local directory named gs: in {directory}'
            names[:] = [n for n in names if n not in ('.venv', '.git', 'node_modules')]


@pytest.fixture(scope='module')
def gs_run(gcs_bucket, tmp_path_factory):
    """A tiny run on gs://BUCKET/run: SIGTERM after its first checkpoint, then resumed to the
    end, as two program runs; returns (workdir URI, object prefix, the two logs)."""
    local = tmp_path_factory.mktemp('program')
    (local / 'tiny_train.py').write_text(CONFIG_FILE)
    prefix = 'program_run/'
    workdir = f'{gcs_bucket.uri}/{prefix.rstrip("/")}'
    env = dict(gcs_bucket.subprocess_env(), JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
               PYTHONPATH=os.path.dirname(os.path.abspath(__file__)))

    def start(log_name):
        with open(local / log_name, 'w') as log:
            return subprocess.Popen(
                [sys.executable, '-m', 'xfm_jax.train',
                 f'--config={local / "tiny_train.py"}:{TOTAL_STEPS}', f'--workdir={workdir}',
                 '--config.checkpoint.every_steps=1'],
                cwd=local, env=env, stdout=log, stderr=subprocess.STDOUT)

    def finish(process, log_name):
        code = process.wait(timeout=TIMEOUT_S)
        log = (local / log_name).read_text()
        assert code == 0, log[-4000:]
        return log

    first = start('first.txt')
    deadline = time.monotonic() + TIMEOUT_S
    while not _step_objects(gcs_bucket, prefix):
        assert first.poll() is None, (local / 'first.txt').read_text()[-4000:]
        assert time.monotonic() < deadline, 'no checkpoint written to the bucket'
        time.sleep(0.1)
    first.send_signal(signal.SIGTERM)
    logs = [finish(first, 'first.txt')]
    logs.append(finish(start('second.txt'), 'second.txt'))
    _no_local_gs_directories(local, ROOT)
    return workdir, prefix, logs


def test_preempted_run_on_gcs_resumes_bitwise(gs_run, gcs_bucket, tmp_path):
    workdir, prefix, (first, second) = gs_run
    stopped = int(re.search(r'preempted: saved step (\d+)', first)[1])
    assert stopped < TOTAL_STEPS and f'restoring step {stopped}' in second
    objects = gcs_bucket.list_objects(prefix)
    assert f'{prefix}metrics.json' in objects
    assert f'{prefix}checkpoints/{TOTAL_STEPS}/run/metadata' in objects  # self-described
    assert any(name.startswith(f'{prefix}tensorboard/events.out') for name in objects)
    assert f'{prefix}LOCK' not in objects  # released by both runs

    # The same steps uninterrupted on local disk, in process: the same parameters, bit for bit.
    expected = train.train(_config(TOTAL_STEPS), str(tmp_path))
    assert json.loads(gcs_bucket.read_object(f'{prefix}metrics.json'))['metrics'] == expected
    config = _config(TOTAL_STEPS)
    model = build_model(config.model)
    tx, _ = ts.make_optimizer(config)
    abstract = jax.eval_shape(lambda r: ts.create_train_state(model, tx, r), jax.random.key(0))
    mesh = partitioning.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    shardings = partitioning.state_shardings(abstract, mesh, partitioning.get_rules('dp'))
    states = []
    for directory in (f'{workdir}/checkpoints', str(tmp_path / 'checkpoints')):
        manager = checkpoint.Checkpoints(directory, config)
        states.append(manager.restore_latest(abstract, shardings)[0])
        manager.close()
    for got, want in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_evaluate_and_finetune_from_gcs(gs_run, gcs_bucket, tmp_path):
    """evaluate --checkpoint=gs://.../run and finetune --init=gs://.../run, writing to the
    bucket; the fine-tuned params then initialise a run again from the bucket."""
    from configs.finetune import image_classification
    from xfm_jax import evaluate, evaluators, finetune
    from xfm_jax.data import tasks
    from configs import xfm_base
    workdir, prefix, _ = gs_run
    data_dir = str(tmp_path / 'tfds')
    tasks.load_builder(tasks.SOURCES['xfm_synthetic_scenes'], data_dir)

    config = xfm_base.get_config('runlocal')
    config.data.tfds_data_dir = data_dir
    config.data.vocab.path = f'{data_dir}/vocab.txt'
    config.evaluate = evaluators.evaluate_config('runlocal')
    config.evaluate.update(evaluators='retrieval', batch_size=8)
    config.evaluate.retrieval.max_images = 8
    results = evaluate.evaluate(config, f'{gcs_bucket.uri}/eval', workdir,
                                devices=jax.devices()[:1])
    assert results['retrieval/num_images'] == 8
    written = json.loads(gcs_bucket.read_object(f'eval/eval_step{TOTAL_STEPS}.json'))
    assert written['metrics'] == results
    assert written['checkpoint'] == f'{workdir}/checkpoints/{TOTAL_STEPS}/state'
    objects = gcs_bucket.list_objects('eval/')
    assert f'eval/retrieval_gallery_step{TOTAL_STEPS}.png' in objects
    assert any(name.startswith('eval/tensorboard/events.out') for name in objects)

    tune = image_classification.get_config('tiny')
    tune.data.tfds_data_dir = data_dir
    tune.data.vocab.path = f'{data_dir}/vocab.txt'
    tune.task.update(max_train=8, max_eval=8)
    tune.train.update(total_steps=2, batch_size=8, eval_batch_size=8, log_every=1)
    out = finetune.finetune(tune, f'{gcs_bucket.uri}/finetuned', init=workdir)
    assert out['init'] == f'{workdir}/checkpoints/{TOTAL_STEPS}/state'
    objects = gcs_bucket.list_objects('finetuned/')
    for name in ('finetuned/finetune.json', 'finetuned/model_config.json'):
        assert name in objects
    assert any(name.startswith('finetuned/params/') for name in objects)
    location = checkpoint.locate(f'{gcs_bucket.uri}/finetuned')
    assert location.kind == 'params' and location.description['task'] == 'image_classification'
    # the fine-tuned backbone is readable from the bucket as a whole model, built from the model
    # the output describes (the pre-training run's: scanned layers, unlike the tiny preset)
    model_config = checkpoint.adopt_stored_model(tune, location.description).model
    assert model_config.scan_layers and not tune.model.scan_layers
    mesh = partitioning.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    abstract, shardings = partitioning.param_shardings(
        build_model(model_config), mesh, partitioning.get_rules('dp'))
    params = checkpoint.restore_params(location, abstract, shardings)
    np.testing.assert_array_equal(
        np.asarray(params['vision_encoder']['patch_embed']['kernel']),
        np.asarray(out['params']['model']['vision_encoder']['patch_embed']['kernel']))
    _no_local_gs_directories(tmp_path, ROOT)


def test_user_source_as_a_gcs_glob_of_reference_shards(gcs_bucket, gcs_dir, tmp_path):
    """The reference repositories' own pre-training shards (JSON lines: a base64 'binary' image
    and a list of captions in 'desc') as a gs:// glob: the build reads them from the bucket
    line by line; the built records are read back by index, and a tiny model trains on them."""
    import base64
    import io

    import tensorflow_datasets as tfds
    from PIL import Image

    from xfm_jax import paths
    from xfm_jax.data import tasks
    from xfm_jax.data.builders import user
    encoded = io.BytesIO()
    Image.new('RGB', (40, 30), (200, 10, 10)).save(encoded, 'PNG')
    b64 = base64.b64encode(encoded.getvalue()).decode()
    for shard in range(2):
        paths.resolve(f'{gcs_dir}/cc3m/part-{shard:05d}.jsonl').write_text('\n'.join(
            json.dumps({'binary': b64, 'desc': [f'red {shard} {i}', f'crimson {shard} {i}']})
            for i in range(3)) + '\n{"binary": "not base64!", "desc": "broken"}\n')
    prefix = gcs_dir[len(gcs_bucket.uri) + 1:]
    assert gcs_bucket.list_objects(f'{prefix}/cc3m/') == [
        f'{prefix}/cc3m/part-00000.jsonl', f'{prefix}/cc3m/part-00001.jsonl']
    builder = tfds.builder('xfm_user', data_dir=str(tmp_path / 'tfds'), file_format='array_record',
                           config=user.UserConfig(name='cc3m', format='jsonl', preset='xvlm',
                                                  path=f'{gcs_dir}/cc3m/part-*.jsonl'))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        try_download_gcs=False))
    records = tasks.open_records(builder, 'train')
    assert records.size == 6
    kept = sorted(caption.decode() for i in range(6) for caption in
                  builder.info.features.deserialize_example_np(
                      records.fetch([i])[0])['captions'])
    assert kept == sorted(f'{word} {s} {i}' for word in ('red', 'crimson') for s in range(2)
                          for i in range(3))

    # The same source trains: the runlocal X-FM on its image-text stream, read from that build.
    from configs import xfm_base
    config = xfm_base.get_config('runlocal')
    config.data.tfds_data_dir = str(tmp_path / 'tfds')
    config.data.vocab.path = str(tmp_path / 'vocab.txt')
    config.data.user_sources = {'cc3m': dict(format='jsonl', preset='xvlm',
                                             path=f'{gcs_dir}/cc3m/part-*.jsonl')}
    for stream in ('text', 'image', 'region'):
        del config.streams[stream], config.data.streams[stream], config.batch[stream]
    config.data.streams.image_text.mixture = [('cc3m_image_text', 1.0)]
    config.streams.image_text = {'itc': 1.0, 'itm': 1.0}
    config.batch.image_text.batch_size = 8
    config.train.update(total_steps=2, log_every=1)
    config.optimizer.warmup_steps = 1
    config.checkpoint.update(every_steps=2, async_save=False, save_on_sigterm=False)
    config.evaluate.evaluators = ''  # pairs without a validation split: nothing to evaluate
    metrics = train.train(config, str(tmp_path / 'run'))
    assert metrics and all(np.isfinite(v) for v in metrics.values()), metrics
    summary = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    assert summary['step'] == 2
    # The build's drops (one bad line per shard) reach the run's counts: the stream read cc3m.
    assert summary['data']['dropped'] == {'image_text': {'missing_file': 2}}
    _no_local_gs_directories(tmp_path, ROOT)
