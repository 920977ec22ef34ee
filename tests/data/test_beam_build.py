"""Distributed builds (xfm_jax/data/build.py): a user source built as an Apache Beam pipeline
(DirectRunner, worker processes) writes the same records, in the same order, and the same
accounting as the in-process build; counts are worked out by hand from the files written."""

import base64
import io
import json

import ml_collections
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from xfm_jax.data import build, tasks
from xfm_jax.data.builders import schema


def _jpeg(colour, size=(48, 32)) -> str:
    out = io.BytesIO()
    Image.new('RGB', size, colour).save(out, format='JPEG')
    return base64.b64encode(out.getvalue()).decode()


def _grey_png() -> str:
    out = io.BytesIO()
    Image.new('L', (20, 20), 128).save(out, format='PNG')
    return base64.b64encode(out.getvalue()).decode()


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
    """Three X-VLM pre-training shards ({"binary": base64, "desc": ...}) in one folder: 8 good
    records (one grey PNG: converted), one truncated image, one without its "desc" field and
    one bad JSON line (both malformed)."""
    root = tmp_path_factory.mktemp('shards')
    red, blue = _jpeg((200, 30, 30)), _jpeg((30, 30, 200), size=(900, 300))
    lines = [
        [{'binary': red, 'desc': 'a red card'}, {'binary': blue, 'desc': ['blue', 'a wide one']},
         {'binary': red[:60], 'desc': 'truncated'}],
        [{'binary': _grey_png(), 'desc': 'grey'}, {'binary': red, 'desc': 'red again'},
         '{"binary": "', {'binary': blue}],
        [{'binary': blue, 'desc': f'blue {i}'} for i in range(4)],
    ]
    for i, records in enumerate(lines):
        (root / f'part-{i:05d}.json').write_text('\n'.join(
            r if isinstance(r, str) else json.dumps(r) for r in records))
    return root


def _data_config(shards, data_dir):
    config = ml_collections.ConfigDict()
    config.tfds_data_dir = str(data_dir)
    config.user_sources = {'pairs': dict(format='jsonl', preset='xvlm', path=str(shards),
                                         max_image_side=256)}
    config.builder_kwargs = {}
    return config


def _records(data_config):
    builder = tasks.load_builder(tasks.sources(data_config)['pairs'], data_config.tfds_data_dir)
    source = builder.as_data_source('train')
    return [source[i] for i in range(len(source))], builder


def test_beam_build_equals_the_in_process_build(shards, tmp_path, caplog):
    local = _data_config(shards, tmp_path / 'local')
    beam = _data_config(shards, tmp_path / 'beam')
    with caplog.at_level('WARNING'):
        assert build.build(local) == build.build(
            beam, beam_runner='DirectRunner',
            beam_options='--direct_num_workers=2 --direct_running_mode=multi_processing')
    # The drops were counted by Beam workers (their logs are relayed with the transform's name).
    assert any('train/train_examples' in r.getMessage() and 'undecodable_image' in r.getMessage()
               for r in caplog.records)
    expected, _ = _records(local)
    got, builder = _records(beam)
    assert len(got) == 8
    assert [r['image_key'] for r in got] == [r['image_key'] for r in expected]
    for a, b in zip(got, expected):
        assert list(a['captions']) == list(b['captions'])
        assert (a['image'] == b['image']).all()
    counts = schema.accounting(builder.info.metadata, 'train')
    assert counts == {'accepted': 8, 'bad': {'undecodable_image': 1, 'malformed_record': 2},
                      'converted': {'grey': 1}}
    assert max(got[0]['image'].shape[:2]) <= 256  # the wide image was stored at 256 x 85


def test_a_tfrecord_build_converts_to_the_same_array_records(shards, tmp_path):
    """The Dataflow route: TFRecord files (where workers cannot write ArrayRecord), converted."""
    local = _data_config(shards, tmp_path / 'local')
    build.build(local)
    build.build(_data_config(shards, tmp_path / 'tf'), beam_runner='DirectRunner',
                file_format='tfrecord')
    converted = _data_config(shards, tmp_path / 'converted')
    build.convert(str(tmp_path / 'tf/xfm_user/pairs/1.0.0'), converted.tfds_data_dir)
    got, builder = _records(converted)
    expected, _ = _records(local)
    assert [r['image_key'] for r in got] == [r['image_key'] for r in expected]
    assert all((a['image'] == b['image']).all() for a, b in zip(got, expected))
    assert schema.accounting(builder.info.metadata, 'train')['bad'] == {
        'undecodable_image': 1, 'malformed_record': 2}
    with pytest.raises(ValueError, match='holds .array_record. files, not tfrecord'):
        build.convert(builder.data_dir, str(tmp_path / 'again'))


def test_build_names_what_is_wrong(shards, tmp_path):
    config = _data_config(shards, tmp_path / 'd')
    with pytest.raises(ValueError, match=r"--sources \['nope'\] are not sources"):
        build.build(config, ['nope'])
    config.user_sources = {}
    with pytest.raises(ValueError, match='no data.user_sources'):
        build.build(config)
