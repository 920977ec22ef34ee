"""Fault injection for every user format (builders/user.py): a corpus of good records mixed with
every kind of bad one. Each test asserts that nothing crashes, that every good record is kept
with its own text (and image), and that every bad record is counted once, by reason
(``bad`` + ``accepted`` = the records in the file), with unusable parts of kept records and
image conversions counted apart.

The builder's example generator runs directly (no TFDS files written), so the suite takes
seconds; tests/data/test_user_data.py covers the full build and reload.
"""

import base64
import io
import json
import math

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from xfm_jax.data.builders import schema, user

RED, BLUE = (200, 30, 30), (30, 30, 200)
MAX_SIDE = 32  # stored images: longer side at most this
MAX_PIXELS = 10_000  # a 200 x 200 "decompression bomb" is over it; the good images are not


def _save(path, image, fmt, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **kwargs)
    return path.name


@pytest.fixture
def corpus(tmp_path):
    """Image files, good and bad, in tmp_path: name -> file name (relative to tmp_path)."""
    rgb = Image.new('RGB', (40, 30), RED)
    good = _save(tmp_path / 'good.jpg', rgb, 'JPEG')
    raw = (tmp_path / good).read_bytes()
    (tmp_path / 'truncated.jpg').write_bytes(raw[:len(raw) // 2])
    (tmp_path / 'zero.jpg').write_bytes(b'')
    (tmp_path / 'random.jpg').write_bytes(np.random.default_rng(0).bytes(500))
    (tmp_path / 'folder.jpg').mkdir()  # a directory where an image should be
    rgba = Image.new('RGBA', (40, 30), RED + (255,))
    rgba.paste((0, 0, 0, 0), (0, 0, 20, 30))
    return {
        'good': good, 'truncated': 'truncated.jpg', 'zero': 'zero.jpg', 'random': 'random.jpg',
        'directory': 'folder.jpg', 'missing': 'missing.jpg',
        'cmyk': _save(tmp_path / 'cmyk.jpg', Image.new('CMYK', (40, 30), (0, 255, 255, 0)),
                      'JPEG'),
        'rgba': _save(tmp_path / 'rgba.png', rgba, 'PNG'),
        'palette': _save(tmp_path / 'palette.png', rgb.convert('P'), 'PNG'),
        'grey': _save(tmp_path / 'grey.png', rgb.convert('L'), 'PNG'),
        # 16-bit grey 30000 of 65535 -> 30000 / 257 = 116.7 -> 117 (PIL alone: clipped to 255).
        'grey16': _save(tmp_path / 'grey16.png',
                        Image.fromarray(np.full((30, 40), 30000, np.uint16)), 'PNG'),
        # float 0.5 in [0, 1] -> 127.5 -> 128 (PIL alone: 0, black).
        'float': _save(tmp_path / 'float.tiff',
                       Image.fromarray(np.full((30, 40), 0.5, np.float32), 'F'), 'TIFF'),
        'gif': _save(tmp_path / 'anim.gif', rgb.convert('P'), 'GIF'),
        'webp': _save(tmp_path / 'pic.webp', rgb, 'WEBP'),
        'tiff': _save(tmp_path / 'pic.tiff', rgb, 'TIFF'),
        'tiny': _save(tmp_path / 'one.png', Image.new('RGB', (1, 1), BLUE), 'PNG'),
        'big': _save(tmp_path / 'big.png', Image.new('RGB', (64, 48), BLUE), 'PNG'),
        'bomb': _save(tmp_path / 'bomb.png', Image.new('RGB', (200, 200), BLUE), 'PNG'),
    }


def _generate(tmp_path, split='train', **fields):
    """(examples by key, accounting) of the builder's generator over one split."""
    fields = dict(max_image_side=MAX_SIDE, max_image_pixels=MAX_PIXELS, **fields)
    builder = tfds.builder('xfm_user', data_dir=str(tmp_path / 'tfds'),
                           config=user.UserConfig(name='faults', **fields))
    path = fields['path'] if split == 'train' else fields['validation_path']
    examples = dict(builder._generate_examples(path, split))
    return examples, schema.accounting(builder.info.metadata, split)


def _decode(image) -> np.ndarray:
    return np.asarray(Image.open(image if isinstance(image, io.BytesIO) else io.BytesIO(image)))


def _write_lines(path, lines):
    """JSON lines; bytes are written as they are (a non-UTF-8 line), str as raw text."""
    path.write_bytes(b'\n'.join(line if isinstance(line, bytes) else
                                (line if isinstance(line, str) else json.dumps(line)).encode()
                                for line in lines))
    return str(path)


def test_jsonl_every_fault(tmp_path, corpus):
    b64 = base64.b64encode((tmp_path / corpus['good']).read_bytes()).decode()
    good = [  # (record, its caption(s) as kept)
        ({'image': corpus['good'], 'caption': 'plain red'}, ['plain red']),
        ({'image': b64, 'caption': ['base64', '   ']}, ['base64']),  # one blank part
        ({'image': 'data:image/jpeg;base64,' + b64, 'caption': '🚀 emoji ünïcode'},
         ['🚀 emoji ünïcode']),
        ({'image': corpus['cmyk'], 'caption': 'cmyk'}, ['cmyk']),
        ({'image': corpus['rgba'], 'caption': 'rgba'}, ['rgba']),
        ({'image': corpus['palette'], 'caption': 'palette'}, ['palette']),
        ({'image': corpus['grey'], 'caption': 'grey'}, ['grey']),
        ({'image': corpus['grey16'], 'caption': 'sixteen bit'}, ['sixteen bit']),
        ({'image': corpus['float'], 'caption': 'float'}, ['float']),
        ({'image': corpus['gif'], 'caption': 'gif'}, ['gif']),
        ({'image': corpus['webp'], 'caption': 'webp'}, ['webp']),
        ({'image': corpus['tiff'], 'caption': 'tiff'}, ['tiff']),
        ({'image': corpus['tiny'], 'caption': 'one pixel'}, ['one pixel']),
        ({'image': corpus['big'], 'caption': 'big'}, ['big']),
    ]
    bad = [  # (line, the reason it is counted under)
        ({'image': corpus['truncated'], 'caption': 'x'}, 'undecodable_image'),
        ({'image': corpus['zero'], 'caption': 'x'}, 'undecodable_image'),
        ({'image': corpus['random'], 'caption': 'x'}, 'undecodable_image'),
        ({'image': corpus['bomb'], 'caption': 'x'}, 'too_many_pixels'),
        ({'image': corpus['missing'], 'caption': 'x'}, 'missing_file'),
        ({'image': corpus['directory'], 'caption': 'x'}, 'missing_file'),
        ({'image': 'not base64 and no file', 'caption': 'x'}, 'missing_file'),
        ({'image': corpus['good'], 'caption': ''}, 'no_text'),
        ({'image': corpus['good'], 'caption': ' \t '}, 'no_text'),
        ({'image': corpus['good'], 'caption': 'y' * 50_000}, 'no_text'),
        ({'image': corpus['good'], 'caption': 5}, 'no_text'),
        ({'image': 42, 'caption': 'x'}, 'malformed_record'),
        ({'image': corpus['good']}, 'malformed_record'),
        ([corpus['good'], 'a list, not an object'], 'malformed_record'),
        ('{"image": "good.jpg", "caption": ', 'malformed_record'),
        (b'{"image": "good.jpg", "caption": "caf\xe9 in Latin-1"}', 'undecodable_text'),
    ]
    # Good and bad interleaved: a bad line must not cost its neighbours.
    lines = [line for pair in zip(good, bad) for line, _ in pair]
    lines += [line for line, _ in bad[len(good):]]
    path = _write_lines(tmp_path / 'pairs.jsonl', lines)
    examples, counts = _generate(tmp_path, path=path)

    kept = {tuple(e['captions']): e for e in examples.values()}
    assert sorted(kept) == sorted(tuple(c) for _, c in good)
    reasons = {}
    for _, reason in bad:
        reasons[reason] = reasons.get(reason, 0) + 1
    assert counts['bad'] == reasons and counts['accepted'] == len(good)
    assert sum(counts['bad'].values()) + counts['accepted'] == len(lines)  # each record once
    # Parts: the blank caption beside 'base64'; the '' and whitespace and int captions and the
    # 50k-character one (their records are then no_text drops).
    assert counts['dropped_parts'] == {'empty_text': 4, 'long_text': 1}
    assert counts['converted'] == {'cmyk': 1, 'alpha': 1, 'palette': 2, 'grey': 1,
                                   '16bit': 1, 'float': 1}  # palette: the PNG and the GIF
    pixels = {c[0]: _decode(e['image']).astype(int) for c, e in kept.items()}
    assert np.abs(pixels['sixteen bit'] - 117).max() <= 2  # not white
    assert np.abs(pixels['float'] - 128).max() <= 2  # not black
    assert np.abs(pixels['rgba'][:, :14] - 255).max() < 12  # transparent half onto white
    assert np.abs(pixels['cmyk'] - (255, 0, 0)).max() < 12  # CMYK (0, 255, 255, 0) is red
    assert pixels['one pixel'].shape == (1, 1, 3)
    assert pixels['big'].shape == (24, 32, 3)  # 64 x 48 at most 32 px: aspect kept
    assert pixels['plain red'].shape == (24, 32, 3)  # 40 x 30


def test_jsonl_shards_globs_folders_and_the_reference_preset(tmp_path, corpus):
    """The X-VLM / X²-VLM pre-training shards: {"binary": base64, "desc": str | [str]}, as a
    folder of shards, a glob, or a comma-separated list; a bad shard line costs only itself."""
    b64 = base64.b64encode((tmp_path / corpus['good']).read_bytes()).decode()
    shards = tmp_path / 'cc3m_bs64'
    shards.mkdir()
    _write_lines(shards / 'part-00000', [{'binary': b64, 'desc': 'first shard'},
                                        b'{"binary": "", "desc": "\xff"}'])
    _write_lines(shards / 'part-00001', [{'binary': b64, 'desc': ['second', 'shard']},
                                        {'binary': b64, 'desc': {'en': 'english', 'zh': '中文'}}])
    for path in (str(shards), str(shards / 'part-*'),
                 f'{shards / "part-00000"},{shards / "part-00001"}'):
        examples, counts = _generate(tmp_path, path=path, preset='xvlm')
        assert sorted(tuple(e['captions']) for e in examples.values()) == [
            ('english', '中文'), ('first shard',), ('second', 'shard')]
        assert counts == {'bad': {'undecodable_text': 1}, 'accepted': 3}
    with pytest.raises(FileNotFoundError, match='part-9'):
        _generate(tmp_path, path=str(shards / 'part-9*'), preset='xvlm')
    with pytest.raises(ValueError, match="preset 'nope'"):
        _generate(tmp_path, path=str(shards), preset='nope')


def test_coco_duplicates_and_missing_fields(tmp_path, corpus):
    coco = {'images': [
        {'id': 1, 'file_name': corpus['good']},
        {'id': 2, 'file_name': corpus['grey']},
        {'id': 7, 'file_name': corpus['good']},  # id 7 twice: whose captions? both dropped
        {'id': 7, 'file_name': corpus['tiny']},
        {'id': 3},  # no file_name
        {'file_name': corpus['good']},  # no id
        {'id': 4, 'file_name': corpus['good']},  # no caption at all
        {'id': 5, 'file_name': corpus['truncated']},
    ], 'annotations': [
        {'image_id': 1, 'caption': 'one a'}, {'image_id': 2, 'caption': 'two'},
        {'image_id': 7, 'caption': 'seven'}, {'image_id': 1, 'caption': 'one b'},
        {'image_id': 1},  # no caption: a part
        {'image_id': [1, 2], 'caption': 'list id'},  # no one image: a part
        {'image_id': 99, 'caption': 'unknown image'},
        {'image_id': 5, 'caption': 'truncated'},
    ]}
    (tmp_path / 'captions.json').write_text(json.dumps(coco))
    examples, counts = _generate(tmp_path, format='coco', path=str(tmp_path / 'captions.json'))
    assert sorted(e['captions'] for e in examples.values()) == [['one a', 'one b'], ['two']]
    assert counts == {'bad': {'duplicate_id': 2, 'malformed_record': 2, 'no_text': 1,
                              'undecodable_image': 1},
                      'converted': {'grey': 1},
                      'dropped_parts': {'empty_text': 1, 'no_image': 2}, 'accepted': 2}
    assert counts['accepted'] + sum(counts['bad'].values()) == len(coco['images'])


def test_karpathy_and_refcoco_groups(tmp_path, corpus):
    karpathy = _write_lines(tmp_path / 'karpathy.jsonl', [
        {'image': corpus['good'], 'caption': 'a first'},
        {'image': corpus['tiny'], 'caption': ['b only']},
        {'image': corpus['good'], 'caption': 'a second'},
        {'caption': 'no image'}, {'image': 7, 'caption': 'image is a number'},
        {'image': corpus['missing'], 'caption': 'gone'},
        'not json',
    ])
    examples, counts = _generate(tmp_path, format='karpathy', path=karpathy)
    assert {e['image_key']: e['captions'] for e in examples.values()} == {
        corpus['good']: ['a first', 'a second'], corpus['tiny']: ['b only']}
    assert counts == {'bad': {'malformed_record': 3, 'missing_file': 1}, 'accepted': 2}
    nan = float('nan')
    refs = _write_lines(tmp_path / 'refs.jsonl', [
        {'image': corpus['good'], 'bbox': [0, 0, 10, 8], 'sentences': [{'sent': 'left'}]},
        {'image': corpus['good'], 'bbox': [nan, 0, 5, 5], 'text': 'nan box'},
        {'image': corpus['good'], 'bbox': [5, 5, -3, 4], 'text': 'negative width'},
        {'image': corpus['good'], 'bbox': [5, 5, 0, 4], 'text': 'zero area'},
        {'image': corpus['good'], 'bbox': [100, 100, 5, 5], 'text': 'outside'},
        {'image': corpus['good'], 'bbox': 'wrong type', 'text': 'a string box'},
        {'image': corpus['tiny'], 'bbox': [2, 2, 1, 1], 'text': 'off a 1 px image'},
    ])
    examples, counts = _generate(tmp_path, format='refcoco', path=refs)
    (example,) = examples.values()
    # good.jpg is 40 x 30, stored at 32 x 24: the box scales by 0.8.
    assert example['objects']['phrase'] == ['left']
    np.testing.assert_allclose(example['objects']['bbox'], [[0, 0, 8, 6.4]], rtol=1e-6)
    assert counts == {'bad': {'no_boxes': 1}, 'dropped_parts': {'bad_box': 6}, 'accepted': 1}


def test_xvlm_region_attributes_boxes_and_preset(tmp_path, corpus):
    b64 = base64.b64encode((tmp_path / corpus['big']).read_bytes()).decode()
    regions = _write_lines(tmp_path / 'regions.jsonl', [
        {'binary': b64, 'caption': 'a blue image', 'elems': [
            {'bb': [8, 8, 16, 8], 'caption': 'car', 'attributes': 'red'},  # not "r e d"
            {'bb': [0, 0, 10, 10], 'caption': ['box', 'square'], 'attributes': ['big', 'old']},
            {'bb': [0, 0, math.inf, 4], 'caption': 'infinite'},
            {'bb': [0, 0, 4, 4], 'caption': 'wrong attributes', 'attributes': 5},
            'not an element',
        ]},
        {'binary': b64, 'elems': [{'bb': [70, 0, 4, 4], 'caption': 'off the right'}]},
        {'binary': 'bad base64!', 'caption': 'x', 'elems': []},
    ])
    examples, counts = _generate(tmp_path, format='xvlm_region', path=regions, preset='xvlm')
    (example,) = examples.values()
    assert example['captions'] == ['a blue image']
    assert example['objects']['phrase'] == ['red car', 'big old box', 'big old square']
    # big.png is 64 x 48, stored at 32 x 24: boxes halve.
    np.testing.assert_allclose(example['objects']['bbox'], [[4, 4, 8, 4], [0, 0, 5, 5],
                                                            [0, 0, 5, 5]])
    assert counts == {'bad': {'no_boxes': 1, 'missing_file': 1},
                      'dropped_parts': {'bad_box': 2, 'malformed_record': 2}, 'accepted': 1}


def test_vqa_one_bad_question_costs_only_itself(tmp_path, corpus):
    (tmp_path / 'val2014').mkdir()
    (tmp_path / 'val2014' / 'COCO_val2014_000000000001.jpg').write_bytes(
        (tmp_path / corpus['good']).read_bytes())
    questions = {'data_subtype': 'val2014', 'questions': [
        {'image_id': 1, 'question': 'Good one?', 'question_id': 10},
        {'image_id': 1, 'question': 'Malformed answers?', 'question_id': 11},
        {'image_id': 1, 'question': 'Good two?', 'question_id': 12},
        {'image_id': [1, 2], 'question': 'List image id?', 'question_id': 13},
        {'image_id': 1, 'question': '   ', 'question_id': 14},
        {'image_id': 2, 'question': 'No image file?', 'question_id': 20},
    ]}
    annotations = {'annotations': [
        {'question_id': 10, 'multiple_choice_answer': 'yes', 'answers': [{'answer': 'yes'}]},
        {'question_id': 11, 'answers': 'yes'},  # a string, not a list of {"answer"}
        {'question_id': 12, 'multiple_choice_answer': 'two', 'answers': [{'answer': 'two'}]},
        {'question_id': [13], 'multiple_choice_answer': 'x'},
        {'question_id': 14, 'multiple_choice_answer': 'blank'},
        {'question_id': 20, 'multiple_choice_answer': 'no'},
    ]}
    (tmp_path / 'q.json').write_text(json.dumps(questions))
    (tmp_path / 'a.json').write_text(json.dumps(annotations))
    examples, counts = _generate(tmp_path, format='vqa_v2', path=str(tmp_path / 'q.json'),
                                 annotations_path=str(tmp_path / 'a.json'))
    (example,) = examples.values()
    assert example['qa']['question'] == ['Good one?', 'Good two?']
    assert example['qa']['answer'] == ['yes', 'two']
    assert counts == {'bad': {'missing_file': 1},
                      'dropped_parts': {'malformed_record': 3, 'empty_text': 1},
                      'accepted': 1}


def test_folders_pairs_text_and_frames(tmp_path, corpus):
    root = tmp_path / 'classes'
    _save(root / 'cat' / 'a.png', Image.new('RGB', (1, 1), RED), 'PNG')
    _save(root / 'cat' / 'b.gif', Image.new('RGB', (8, 8), RED).convert('P'), 'GIF')
    (root / 'cat' / 'broken.jpg').write_bytes(b'\xff\xd8 no')
    (root / 'cat' / 'notes.txt').write_text('x')
    examples, counts = _generate(tmp_path, format='image_folder', path=str(root))
    assert sorted(e['image_key'] for e in examples.values()) == ['cat/a.png', 'cat/b.gif']
    assert counts == {'bad': {'undecodable_image': 1, 'not_an_image': 1},
                      'converted': {'palette': 1}, 'accepted': 2}

    pairs = _write_lines(tmp_path / 'nlvr.jsonl', [
        {'identifier': 'p-1', 'sentence': 'Both red.', 'label': 'True',
         'images': [corpus['good'], corpus['tiny']]},
        {'identifier': 'p-2', 'sentence': 'Label?', 'label': 'perhaps',
         'images': [corpus['good'], corpus['good']]},
        {'identifier': 'p-3', 'sentence': 'One side gone.', 'label': 'False',
         'images': [corpus['good'], corpus['missing']]},
        {'identifier': 'p-4', 'sentence': 7, 'label': 'False',
         'images': [corpus['good'], corpus['good']]},
        {'identifier': 'p-5', 'sentence': 'Three images.', 'label': True, 'images': ['a'] * 3},
    ])
    examples, counts = _generate(tmp_path, format='nlvr2', path=pairs)
    assert [(e['sentence'], e['label']) for e in examples.values()] == [('Both red.', 1)]
    assert counts == {'bad': {'bad_label': 1, 'missing_file': 1, 'no_text': 1,
                              'malformed_record': 1},
                      'dropped_parts': {'empty_text': 1}, 'accepted': 1}

    (tmp_path / 'a.txt').write_bytes('first 🚀\n\n   \n'.encode() + b'caf\xe9 latin-1\nlast\n')
    examples, counts = _generate(tmp_path, format='text', path=str(tmp_path / '*.txt'))
    assert sorted(e['text'] for e in examples.values()) == ['first 🚀', 'last']
    assert counts == {'bad': {'undecodable_text': 1}, 'accepted': 2}  # the file's other lines

    clip = tmp_path / 'clip'
    for i, colour in enumerate((RED, BLUE)):
        _save(clip / f'{i}.png', Image.new('RGB', (64, 48), colour), 'PNG')
    (clip / '2.jpg').write_bytes(b'')
    frames = _write_lines(tmp_path / 'videos.jsonl', [
        {'frames': 'clip', 'caption': 'red then blue'},
        {'frames': 'nowhere', 'caption': 'no frames'},
        {'frames': 'clip', 'caption': None}])
    examples, counts = _generate(tmp_path, format='video_frames', path=frames)
    (example,) = examples.values()
    assert example['captions'] == ['red then blue'] and len(example['frames']) == 2
    assert _decode(example['frames'][0]).shape == (24, 32, 3)  # frames bounded too
    assert counts == {'bad': {'missing_file': 1, 'no_text': 1},
                      'dropped_parts': {'undecodable_image_frame': 1}, 'accepted': 1}


def test_sources_on_gs_through_the_path_layer(tmp_path, corpus, monkeypatch):
    """A ``gs://`` glob of shards with images beside them: every file access goes through
    ``xfm_jax.paths`` (etils.epath), here served from a local folder by epath's test backend,
    so a plain ``open`` or ``os`` call on a ``gs://`` name would fail the build."""
    from etils.epath import gpath, testing as epath_testing
    # epath picks TensorFlow's file system for gs:// whenever TF is installed, past the mock.
    monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)
    bucket = tmp_path / 'bucket'
    (bucket / 'img').mkdir(parents=True)
    (bucket / 'img' / 'red.jpg').write_bytes((tmp_path / corpus['good']).read_bytes())
    _write_lines(bucket / 'part-00000.jsonl', [{'image': 'img/red.jpg', 'caption': 'shard zero'},
                                               {'image': 'img/gone.jpg', 'caption': 'missing'}])
    _write_lines(bucket / 'part-00001.jsonl', [b'\xff not utf-8',
                                               {'image': 'img/red.jpg', 'caption': 'shard one'}])

    def local(path):
        text = str(path)
        return text.replace('gs://bucket', str(bucket)) if text.startswith('gs://') else text

    def remote(path):
        return str(path).replace(str(bucket), 'gs://bucket')

    def redirect(original, path, *args, **kwargs):
        return original(local(path), *args, **kwargs)

    def glob(original, pattern):
        return [remote(p) for p in original(local(pattern))]

    b64 = base64.b64encode((tmp_path / corpus['good']).read_bytes()).decode()
    (bucket / 'cc3m').mkdir()
    _write_lines(bucket / 'cc3m' / 'part-00000', [{'binary': b64, 'desc': ['reference', 'x']}])
    with epath_testing.mock_epath(open=redirect, exists=redirect, isdir=redirect,
                                  listdir=redirect, stat=redirect, glob=glob):
        examples, counts = _generate(tmp_path, path='gs://bucket/part-*.jsonl')
        # The reference's own shard folder, unchanged, by the preset.
        shards, shard_counts = _generate(tmp_path, path='gs://bucket/cc3m', preset='xvlm')
    assert [e['captions'] for e in shards.values()] == [['reference', 'x']]
    assert shard_counts == {'accepted': 1}
    assert sorted((key.rsplit(':', 1)[0], e['captions']) for key, e in examples.items()) == [
        ('gs://bucket/part-00000.jsonl', ['shard zero']),
        ('gs://bucket/part-00001.jsonl', ['shard one'])]
    assert counts == {'bad': {'missing_file': 1, 'undecodable_text': 1}, 'accepted': 2}
