"""User data formats (builders/user.py) and bad data: every bad case is dropped (or converted)
and counted by reason, at build time and through the pipeline's bad_counts(). Expected counts
are worked out by hand from the files each test writes."""

import base64
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from xfm_jax.data.builders import schema, user

RED = (200, 30, 30)


def _save(path, image, fmt):
    image.save(path, format=fmt)
    return str(path)


@pytest.fixture
def images(tmp_path):
    """Good and bad image files: name -> path."""
    rgb = Image.new('RGB', (40, 30), RED)
    good = _save(tmp_path / 'good.jpg', rgb, 'JPEG')
    raw = open(good, 'rb').read()
    (tmp_path / 'truncated.jpg').write_bytes(raw[:len(raw) // 2])
    (tmp_path / 'corrupt.jpg').write_bytes(b'\xff\xd8 this is not a jpeg')
    alpha = Image.new('RGBA', (40, 30), RED + (255,))
    alpha.paste((0, 0, 0, 0), (0, 0, 20, 30))  # left half fully transparent
    return {
        'good': good, 'truncated': str(tmp_path / 'truncated.jpg'),
        'corrupt': str(tmp_path / 'corrupt.jpg'),
        'grey': _save(tmp_path / 'grey.png', rgb.convert('L'), 'PNG'),
        'cmyk': _save(tmp_path / 'cmyk.jpg', Image.new('CMYK', (40, 30), (255, 0, 0, 0)), 'JPEG'),
        'alpha': _save(tmp_path / 'alpha.png', alpha, 'PNG'),
    }


def _build(tmp_path, name, **fields):
    builder = tfds.builder('xfm_user', data_dir=str(tmp_path / 'tfds'),
                           config=user.UserConfig(name=name, **fields))
    builder.download_and_prepare()
    reloaded = tfds.builder('xfm_user', data_dir=str(tmp_path / 'tfds'),
                            config=user.UserConfig(name=name, **fields))
    examples = list(tfds.as_numpy(reloaded.as_dataset('train')))
    return examples, schema.accounting(reloaded.info.metadata, 'train')  # survives a reload


def _write_jsonl(path, records):
    path.write_text('\n'.join(r if isinstance(r, str) else json.dumps(r) for r in records))
    return str(path)


def test_jsonl_pairs_and_bad_data(tmp_path, images, caplog):
    good_b64 = base64.b64encode(open(images['good'], 'rb').read()).decode()
    records = [
        {'image': 'good.jpg', 'caption': 'A red picture'},
        {'image': good_b64, 'caption': ['base64 inline', '   ', 'x' * 1001]},
        {'image': 'data:image/jpeg;base64,' + good_b64, 'caption': 'a data uri'},
        {'image': 'grey.png', 'caption': 'grey'},
        {'image': 'cmyk.jpg', 'caption': 'cmyk'},
        {'image': 'alpha.png', 'caption': 'alpha'},
        {'image': 'truncated.jpg', 'caption': 'truncated'},
        {'image': 'corrupt.jpg', 'caption': 'corrupt'},
        {'image': 'missing.jpg', 'caption': 'missing'},
        {'image': 'good.jpg', 'caption': ''},
        {'image': 'good.jpg'},
        '{"image": "good.jpg", "caption": ',
    ]
    path = _write_jsonl(tmp_path / 'pairs.jsonl', records)
    with caplog.at_level('INFO'):
        examples, counts = _build(tmp_path, 'pairs', format='jsonl', path=path)
    # Kept: good, base64, data uri, grey, cmyk, alpha. Dropped: truncated + corrupt (undecodable),
    # missing, '' caption (no usable text), no "caption" key, bad JSON (both malformed).
    assert len(examples) == 6
    # Each dropped record once (the '' caption is a dropped part and its record's no_text);
    # conversions and parts of kept records apart.
    assert counts == {'bad': {'undecodable_image': 2, 'missing_file': 1, 'no_text': 1,
                              'malformed_record': 2},
                      'converted': {'grey': 1, 'cmyk': 1, 'alpha': 1},
                      'dropped_parts': {'empty_text': 2, 'long_text': 1}, 'accepted': 6}
    by_caption = {tuple(c.decode() for c in ex['captions']): ex for ex in examples}
    assert set(by_caption) == {('A red picture',), ('base64 inline',), ('a data uri',),
                               ('grey',), ('cmyk',), ('alpha',)}
    for ex in examples:
        assert ex['image'].shape == (30, 40, 3)
    alpha = by_caption[('alpha',)]['image'].astype(int)
    assert np.abs(alpha[:, :16] - 255).max() < 12  # transparent half composited onto white
    assert np.abs(alpha[:, 24:] - RED).max() < 12
    # PIL's CMYK -> RGB: pure cyan (255, 0, 0, 0) is (0, 255, 255).
    assert np.abs(by_caption[('cmyk',)]['image'].astype(int) - (0, 255, 255)).max() < 12
    assert 'undecodable_image in ' in caplog.text and 'pairs.jsonl:7' in caplog.text
    assert 'xfm_user/pairs/train: accepted 6 of 12 records' in caplog.text


def test_coco_captions(tmp_path, images):
    coco = {'images': [{'id': 1, 'file_name': 'good.jpg'}, {'id': 2, 'file_name': 'grey.png'},
                       {'id': 3, 'file_name': 'good.jpg'}],
            'annotations': [{'image_id': 1, 'caption': 'first'},
                            {'image_id': 1, 'caption': 'second'},
                            {'image_id': 2, 'caption': 'third'}]}
    (tmp_path / 'captions.json').write_text(json.dumps(coco))
    examples, counts = _build(tmp_path, 'coco', format='coco',
                              path=str(tmp_path / 'captions.json'))
    assert sorted(sorted(c.decode() for c in ex['captions']) for ex in examples) == [
        ['first', 'second'], ['third']]
    assert counts == {'bad': {'no_text': 1}, 'converted': {'grey': 1},  # image 3: no caption
                      'accepted': 2}


def test_xvlm_regions_boxes_clipped_or_dropped(tmp_path, images):
    records = [
        {'image': 'good.jpg', 'caption': 'a red image', 'elems': [
            {'bb': [5, 5, 10, 8], 'caption': 'car', 'attributes': ['red', 'small']},
            {'bb': [-10, 5, 30, 10], 'caption': 'left edge'},  # clipped to x 0..20
            {'bb': [50, 40, 5, 5], 'caption': 'outside'},
            {'bb': [5, 5, 0, 8], 'caption': 'zero width'},
            {'bb': [1, 2, 3], 'caption': 'three numbers'},
            {'bb': [1, 1, 5, 5], 'caption': '  '},
        ]},
        {'image': 'good.jpg', 'elems': [{'bb': [41, 0, 4, 4], 'caption': 'off the right'}]},
    ]
    (tmp_path / 'regions.json').write_text(json.dumps(records))
    examples, counts = _build(tmp_path, 'regions', format='xvlm_region',
                              path=str(tmp_path / 'regions.json'))
    assert len(examples) == 1
    ex = examples[0]
    assert [p.decode() for p in ex['objects']['phrase']] == ['red small car', 'left edge']
    np.testing.assert_allclose(ex['objects']['bbox'], [[5, 5, 10, 8], [0, 5, 20, 10]])
    assert [c.decode() for c in ex['captions']] == ['a red image']
    # outside, zero width, three numbers, off the right: bad boxes; the blank phrase: empty text;
    # the second record keeps nothing.
    assert counts == {'bad': {'no_boxes': 1}, 'dropped_parts': {'bad_box': 4, 'empty_text': 1},
                      'accepted': 1}


def test_text_files_and_video_frames(tmp_path, images):
    (tmp_path / 'a.txt').write_text('first line\n\n  \nsecond line\n')
    (tmp_path / 'b.txt').write_text('third line')
    (tmp_path / 'c.txt').write_bytes(b'latin-1 \xe9t\xe9 is not utf-8')
    examples, counts = _build(tmp_path, 'texts', format='text', path=str(tmp_path / '*.txt'))
    assert sorted(ex['text'].decode() for ex in examples) == ['first line', 'second line',
                                                               'third line']
    assert counts == {'bad': {'undecodable_text': 1}, 'accepted': 3}
    clip = tmp_path / 'clip'
    clip.mkdir()
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
        _save(clip / f'{i:03d}.png', Image.new('RGB', (16, 12), colour), 'PNG')
    (clip / '004.jpg').write_bytes(b'corrupt frame')
    _write_jsonl(tmp_path / 'videos.jsonl', [{'frames': 'clip', 'caption': 'colours'},
                                             {'frames': 'nowhere', 'caption': 'no frames'}])
    examples, counts = _build(tmp_path, 'videos', format='video_frames', max_frames=3,
                              path=str(tmp_path / 'videos.jsonl'))
    assert len(examples) == 1 and examples[0]['frames'].shape == (3, 12, 16, 3)
    # 3 of 4 good frames, evenly spaced: indices 0, 1.5 -> 2 (round half to even), 3.
    np.testing.assert_allclose(examples[0]['frames'][:, 6, 8], [[255, 0, 0], [0, 0, 255],
                                                                [255, 255, 0]], atol=12)
    assert counts == {'bad': {'missing_file': 1},
                      'dropped_parts': {'undecodable_image_frame': 1}, 'accepted': 1}


def test_user_sources_feed_the_pipeline_and_bad_counts(tmp_path, images, data_dir):
    from configs import data as data_configs, x2vlm_base
    from xfm_jax.data import pipeline
    model = x2vlm_base.get_config('tiny').model
    model.text.mask_id = min(model.text.mask_id, model.text.vocab_size - 1)
    config = data_configs.data_config('synthetic_tiny', model)
    config.tfds_data_dir = str(tmp_path / 'tfds')
    config.vocab.path = f'{data_dir}/vocab_user.txt'
    pairs = _write_jsonl(tmp_path / 'pairs.jsonl', [
        {'image': 'good.jpg', 'caption': 'a red square'}, {'image': 'grey.png', 'caption': 'x'},
        {'image': 'corrupt.jpg', 'caption': 'broken'}])
    regions = tmp_path / 'regions.jsonl'
    _write_jsonl(regions, [{'image': 'good.jpg', 'elems': [
        {'bb': [5, 5, 10, 8], 'caption': 'red'}, {'bb': [0, 0, 0, 0], 'caption': 'nothing'}]}])
    config.user_sources = {'mine': {'format': 'jsonl', 'path': pairs},
                           'boxes': {'format': 'xvlm_region', 'path': str(regions)}}
    config.streams = {
        'image_text': dict(config.streams.image_text.to_dict(), batch_size=4,
                           mixture=[('mine_image_text', 1.0)]),
        'region': dict(config.streams.region.to_dict(), batch_size=2,
                       mixture=[('boxes_region', 1.0)])}
    streams = pipeline.make_streams(config, seed=0)
    batch = next(streams)
    counts = streams.bad_counts()
    streams.close()
    assert batch['image_text']['image'].shape[0] == 4 and batch['region']['box'].shape[0] == 2
    # The region record keeps one box (anchor): box_valid is 1 in slot 0 or 1 (after a caption;
    # this record has none, so slot 0).
    assert (batch['region']['box_valid'][:, 0] == 1).all()
    # Dropped records only: the grey conversion and the region's bad box are kept records.
    assert counts['image_text'] == {'undecodable_image': 1} and not counts.get('region')
