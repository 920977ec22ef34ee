"""End-to-end: seqio mixtures -> batches that satisfy xfm_jax/streams.py; determinism, resume,
host sharding, global arrays and bad-data accounting."""

import io

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf
from PIL import Image

from configs import data as data_configs, x2vlm_base, xfm_base
from xfm_jax import streams as contract
from xfm_jax.data import pipeline, tasks


def _config(family, data_dir, tmp_path_factory=None):
    model = (xfm_base if family == 'xfm' else x2vlm_base).get_config('tiny').model
    if model.text.mask_id >= model.text.vocab_size:
        # configs/common.tiny_model keeps RoBERTa's <mask>=50264 with a 512-token vocab.
        model.text.mask_id = model.text.vocab_size - 1
    config = data_configs.data_config('synthetic_tiny', model)
    config.tfds_data_dir = data_dir
    config.vocab.path = f'{data_dir}/vocab_{family}.txt'
    return config


def _take(streams, n):
    batches = [next(streams) for _ in range(n)]
    return batches


def _assert_equal(a, b):
    assert a.keys() == b.keys()
    for stream in a:
        for field in a[stream]:
            np.testing.assert_array_equal(np.asarray(a[stream][field]),
                                          np.asarray(b[stream][field]), err_msg=f'{stream}.{field}')


@pytest.mark.parametrize('family', ['xfm', 'x2vlm'])
def test_batches_match_contract(family, data_dir):
    config = _config(family, data_dir)
    streams = pipeline.make_streams(config, seed=0)
    batch = next(streams)
    streams.close()
    expected_streams = {'xfm': {'text', 'image', 'image_text', 'region'},
                        'x2vlm': {'image_text', 'region', 'video'}}[family]
    assert set(batch) == expected_streams
    for stream, fields in batch.items():
        s = config.streams[stream]
        specs = contract.field_specs(stream, batch=s.batch_size, text_len=s.get('text_len', 1),
                                     image_size=config.image_size, patch_size=config.patch_size,
                                     region_texts=s.get('region_texts', 1),
                                     frames=s.get('frames', 1))
        assert set(fields) == set(specs), stream
        for name, (shape, dtype) in specs.items():
            assert fields[name].shape == shape and fields[name].dtype == np.dtype(dtype), (
                stream, name, fields[name].shape, fields[name].dtype)
        if 'mim_mask' in fields:
            assert (fields['mim_mask'].sum(-1) == config.mim.num_masked).all()
        if 'mlm_weights' in fields:
            w, ids = fields['mlm_weights'], fields['input_ids']
            assert (w[..., 0] == 0).all()
            assert (ids[..., 0][fields['attention_mask'][..., 0] == 1] == config.vocab.cls_id).all()
            changed = fields['masked_ids'] != ids
            assert not changed[w == 0].any()
    region = batch['region']
    # Whole-image and padding texts have box (0.5, 0.5, 1, 1) and box_valid 0.
    invalid = region['box_valid'] == 0
    np.testing.assert_allclose(region['box'][invalid], np.tile([0.5, 0.5, 1, 1],
                                                               (invalid.sum(), 1)))
    assert (region['text_valid'][:, 0] == 1).all()
    assert ((region['box'][..., :2] >= 0) & (region['box'][..., :2] <= 1)).all()


def test_same_seed_same_batches_and_resume(data_dir):
    config = _config('x2vlm', data_dir)
    del config.streams['video']  # keeps the test fast; every stream shares the same reader code
    first = pipeline.make_streams(config, seed=3)
    run = _take(first, 1)
    saved = first.state()
    run += _take(first, 2)
    first.close()
    again = pipeline.make_streams(config, seed=3)
    for expected in run:
        _assert_equal(expected, next(again))
    again.close()
    resumed = pipeline.make_streams(config, seed=3, state=saved)
    for expected in run[1:]:
        _assert_equal(expected, next(resumed))
    resumed.close()
    other = pipeline.make_streams(config, seed=4)
    assert not np.array_equal(next(other)['image_text']['image'], run[0]['image_text']['image'])
    other.close()
    with pytest.raises(ValueError, match='seed=3'):
        pipeline.make_streams(config, seed=5, state=saved)


def test_host_shards_are_disjoint_and_cover(data_dir):
    config = _config('xfm', data_dir)
    tasks.register(config)
    task = seqio.get_mixture_or_task('xfm_synthetic_sentences_text')

    def texts(shard):
        ds = task.get_dataset(None, split='validation', shuffle=False, num_epochs=1,
                              shard_info=shard)
        return [tuple(ex['text_ids'].tolist()) + (ex['source'],)
                for ex in ds.as_numpy_iterator()]

    everything = texts(None)
    shards = [texts(seqio.ShardInfo(i, 3)) for i in range(3)]
    assert sum(len(s) for s in shards) == len(everything)
    assert sorted(sum(shards, [])) == sorted(everything)


def test_global_arrays_on_devices(data_dir):
    config = _config('x2vlm', data_dir)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
    streams = pipeline.make_streams(config, seed=0, sharding=sharding)
    batch = next(streams)
    streams.close()
    frames = batch['video']['frames']
    assert isinstance(frames, jax.Array) and frames.sharding == sharding
    assert frames.shape[0] == config.streams.video.batch_size


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_bad_records_are_dropped_counted_and_logged(data_dir, monkeypatch, caplog):
    """Corrupt / truncated bytes, empty captions: dropped and counted; grey and RGBA images used."""
    rgb = Image.new('RGB', (40, 30), (200, 30, 30))
    good = _encoded(rgb, 'JPEG')
    records = [
        ('good', good, 'a red square'),
        ('corrupt', b'not an image at all', 'a caption'),
        ('truncated', good[:len(good) // 2], 'a caption'),
        ('empty', good, '?!'),
        ('grey', _encoded(rgb.convert('L'), 'PNG'), 'a grey picture'),
        ('alpha', _encoded(rgb.convert('RGBA'), 'PNG'), 'a picture with alpha'),
    ]

    def fake_source(source, data_dir, split, shuffle_files, seed=None):
        return tf.data.Dataset.from_tensor_slices({
            'image': [r[1] for r in records], 'image_key': [r[0] for r in records],
            'captions': [[r[2]] for r in records],
            'objects': {'bbox': tf.zeros([len(records), 0, 4]),
                        'phrase': tf.zeros([len(records), 0], tf.string)}})

    monkeypatch.setattr(tasks, '_dataset_fn', fake_source)
    monkeypatch.setattr(tasks, 'build_counts', lambda source, data_dir, split: {})
    monkeypatch.setitem(tasks.SOURCES, 'bad_source',
                        tasks.Source('xfm_jax.data.tasks', 'unused', 'image_text'))
    config = _config('x2vlm', data_dir)
    config.streams = {'image_text': dict(config.streams.image_text.to_dict(), batch_size=6,
                                         mixture=[('bad_source_image_text', 1.0)])}
    streams = pipeline.make_streams(config, seed=0)
    with caplog.at_level('WARNING'):
        next(streams)  # 6 rows need 18 records with 3 good per pass of 6
    counts = streams.bad_counts()['image_text']
    streams.close()
    # Each pass over the 6 records yields 3 usable rows and drops 2 undecodable + 1 empty, so
    # every consumed record beyond the 6 used ones is accounted for under one of these reasons.
    assert set(counts) == {'undecodable', 'empty_text'}
    consumed = streams.state()['consumed']['image_text']
    assert counts['undecodable'] + counts['empty_text'] == consumed - 6
    assert 'empty_text' in caplog.text and 'bad_source_image_text:empty' in caplog.text
