"""End-to-end: seqio mixtures -> batches that satisfy xfm_jax/streams.py; determinism, resume,
host sharding, global arrays and bad-data accounting."""

import collections
import io
import json

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
    assert len(json.dumps(saved)) < 1000  # positions, not records: stays small (checkpoint JSON)
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


def _rows(ds, n):
    return [tuple(ex['text_ids'].tolist()) for ex in ds.take(n).as_numpy_iterator()]


def test_resume_on_several_hosts(data_dir):
    """Two simulated hosts: each resumes from the saved state exactly, and their rows differ."""
    config = _config('x2vlm', data_dir)
    config.streams = {'image_text': config.streams.image_text}
    runs, states = [], []
    for host in range(2):
        streams = pipeline.make_streams(config, seed=1, process_index=host, process_count=2)
        run = _take(streams, 1)
        states.append(streams.state())
        runs.append(run + _take(streams, 2))
        streams.close()
    assert not np.array_equal(runs[0][0]['image_text']['image'],
                              runs[1][0]['image_text']['image'])
    for host in range(2):
        resumed = pipeline.make_streams(config, seed=1, state=states[host], process_index=host,
                                        process_count=2)
        for expected in runs[host][1:]:
            _assert_equal(expected, next(resumed))
        resumed.close()


def test_task_records_are_addressed_split_over_hosts_and_reshuffled(data_dir):
    """Host h reads places h, h+P, ... of each epoch's permutation: the hosts' first epochs are
    disjoint and together every record but size % P; position n is reached without reading
    0..n-1 and equals reading up to it; the next epoch is another order."""
    config = _config('xfm', data_dir)
    tasks.register(config)
    task = seqio.get_mixture_or_task('xfm_synthetic_sentences_text')
    stored = [tuple(ex['text_ids'].tolist()) for ex in
              task.get_dataset(None, split='validation', shuffle=False).as_numpy_iterator()]
    readers = [pipeline._TaskReader(task, 'validation', seed=7, process_index=h,
                                    process_count=3) for h in range(3)]
    length = len(stored) // 3
    assert readers[0].epoch_length == length
    firsts = [_rows(r.dataset(0), length) for r in readers]
    together = collections.Counter(sum(firsts, []))
    assert sum(together.values()) == 3 * length
    assert not together - collections.Counter(stored)  # a sub-multiset of the split
    far = 2 * length + 5
    reached = _rows(readers[1].dataset(far), 4)
    assert reached == _rows(readers[1].dataset(0).skip(far), 4)
    assert _rows(readers[1].dataset(length), length) != firsts[1]


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


def _memory_records(records):
    """tasks.Records over in-memory (key, image bytes, caption) triples, as a source would give."""
    serialized = [tf.train.Example(features=tf.train.Features(feature={
        'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        'image_key': tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode()])),
        'captions': tf.train.Feature(bytes_list=tf.train.BytesList(value=[caption.encode()])),
    })).SerializeToString() for key, image, caption in records]
    spec = {'image': tf.io.FixedLenFeature([], tf.string),
            'image_key': tf.io.FixedLenFeature([], tf.string),
            'captions': tf.io.FixedLenFeature([1], tf.string)}

    def parse(s):
        ex = tf.io.parse_single_example(s, spec)
        return {**ex, 'objects': {'bbox': tf.zeros([0, 4]), 'phrase': tf.zeros([0], tf.string)}}
    return tasks.Records(len(serialized), lambda index: [serialized[i] for i in index], parse)


def test_bad_records_are_dropped_counted_once_and_logged(data_dir, monkeypatch, caplog):
    """Corrupt / truncated bytes, empty captions: dropped and counted once each however many
    epochs pass; grey and RGBA images used; build-time conversions reported apart from drops."""
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
    monkeypatch.setattr(tasks, 'source_records', lambda *args: _memory_records(records))
    monkeypatch.setattr(tasks, 'build_counts', lambda source, data_dir, split: {
        'dropped': {'missing_file': 2}, 'converted': {'alpha': 1}})
    monkeypatch.setitem(tasks.SOURCES, 'bad_source',
                        tasks.Source('xfm_jax.data.tasks', 'unused', 'image_text'))
    config = _config('x2vlm', data_dir)
    config.streams = {'image_text': dict(config.streams.image_text.to_dict(), batch_size=6,
                                         mixture=[('bad_source_image_text', 1.0)])}
    streams = pipeline.make_streams(config, seed=0)
    with caplog.at_level('WARNING'):
        for _ in range(3):  # 6 rows take two passes over the 3 good records: six epochs in all
            next(streams)
    dropped, converted = streams.bad_counts()['image_text'], streams.converted_counts()
    state = streams.state()['streams']['image_text']
    streams.close()
    # 18 good rows need six passes: five whole epochs, then the sixth's 3 good of 6 records.
    assert 33 <= state['position'][0] <= 36
    assert state['tasks'] == {'bad_source_image_text': state['position']}
    assert dropped == {'undecodable': 2, 'empty_text': 1, 'missing_file': 2}
    assert converted == {'image_text': {'alpha': 1}}
    assert 'empty_text' in caplog.text and 'bad_source_image_text:empty' in caplog.text


def test_records_parse_only_the_features_named(data_dir):
    source = tasks.SOURCES['xfm_synthetic_scenes']
    whole, part = (
        next(tasks.ordered(tasks.source_records(source, data_dir, 'train', features), limit=1)
             .as_numpy_iterator())
        for features in ((), ('image', 'captions')))
    assert {'objects', 'qa', 'label'} <= set(whole) and set(part) == {'image', 'captions'}
    assert part['image'] == whole['image']  # still the stored JPEG bytes (decoded in the crop)
    np.testing.assert_array_equal(part['captions'], whole['captions'])
    with pytest.raises(ValueError, match=r"has no features \['boxes'\]"):
        tasks.source_records(source, data_dir, 'train', ('image', 'boxes'))
