"""Downstream-task formats of ``xfm_user`` (builders/user.py): Karpathy retrieval JSON, VQA v2,
RefCOCO, image folders, NLVR2. Each test writes tiny files (solid-colour PNGs, so a stored image
shows which file it came from), builds offline, and checks every field and every drop count
against values worked out by hand from the files."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from xfm_jax.data.builders import schema, user

COLOURS = {'red': (220, 20, 20), 'green': (20, 200, 20), 'blue': (20, 20, 220),
           'yellow': (230, 230, 20)}


def _png(path, colour, size=(40, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new('RGB', size, COLOURS[colour]).save(path, format='PNG')


def _colour(image):
    """The COLOURS name closest to an image's mean pixel (JPEG shifts values a little)."""
    mean = image.reshape(-1, 3).mean(0)
    return min(COLOURS, key=lambda c: np.abs(mean - COLOURS[c]).sum())


def _build(tmp_path, name, split='train', **fields):
    config = user.UserConfig(name=name, **fields)
    tfds.builder('xfm_user', data_dir=str(tmp_path / 'tfds'), config=config).download_and_prepare()
    reloaded = tfds.builder('xfm_user', data_dir=str(tmp_path / 'tfds'), config=config)
    examples = list(tfds.as_numpy(reloaded.as_dataset(split)))
    return examples, schema.accounting(reloaded.info.metadata, split)


def _dump(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def _texts(values):
    return [v.decode() for v in values]


def test_karpathy_groups_captions_by_image(tmp_path):
    _png(tmp_path / 'val2014/a.png', 'red')
    _png(tmp_path / 'val2014/b.png', 'blue')
    train = _dump(tmp_path / 'coco_karpathy_train.json', [
        {'image': 'val2014/a.png', 'caption': 'first of a', 'image_id': 'coco_1'},
        {'image': 'val2014/b.png', 'caption': 'only b', 'image_id': 'coco_2'},
        {'image': 'val2014/a.png', 'caption': 'second of a', 'image_id': 'coco_1'},
        {'image': 'val2014/a.png', 'caption': '  ', 'image_id': 'coco_1'},
        {'image': 'val2014/missing.png', 'caption': 'gone'},
        {'caption': 'no image key'},
    ])
    test = _dump(tmp_path / 'coco_karpathy_test.json', [
        {'image': 'val2014/b.png', 'caption': ['b one', 'b two', 'b three']},
        {'image': 'val2014/a.png', 'caption': ['a one', 'x' * 1001]},
    ])
    fields = dict(format='karpathy', path=train, validation_path=test)
    examples, counts = _build(tmp_path, 'karpathy', **fields)
    by_key = {ex['image_key'].decode(): ex for ex in examples}
    assert set(by_key) == {'val2014/a.png', 'val2014/b.png'}  # one example per image
    assert _texts(by_key['val2014/a.png']['captions']) == ['first of a', 'second of a']
    assert _texts(by_key['val2014/b.png']['captions']) == ['only b']
    assert _colour(by_key['val2014/a.png']['image']) == 'red'
    assert by_key['val2014/b.png']['image'].shape == (30, 40, 3)
    # The blank caption; the missing file; the record without an image.
    assert counts == {'bad': {'missing_file': 1, 'malformed_record': 1},
                      'dropped_parts': {'empty_text': 1}, 'accepted': 2}
    examples, counts = _build(tmp_path, 'karpathy', 'validation', **fields)
    by_key = {ex['image_key'].decode(): ex for ex in examples}
    assert _texts(by_key['val2014/b.png']['captions']) == ['b one', 'b two', 'b three']
    assert _texts(by_key['val2014/a.png']['captions']) == ['a one']
    assert _colour(by_key['val2014/b.png']['image']) == 'blue'
    assert counts == {'dropped_parts': {'long_text': 1}, 'accepted': 2}


def _vqa_files(tmp_path):
    for image_id, colour in ((1, 'red'), (2, 'green')):  # PNG bytes under COCO's .jpg names
        _png(tmp_path / f'coco/val2014/COCO_val2014_{image_id:012d}.jpg', colour)
    questions = _dump(tmp_path / 'v2_OpenEnded_mscoco_val2014_questions.json', {
        'data_subtype': 'val2014', 'questions': [
            {'image_id': 1, 'question': 'What colour is it?', 'question_id': 10},
            {'image_id': 2, 'question': 'How many shapes?', 'question_id': 20},
            {'image_id': 1, 'question': 'Is it round?', 'question_id': 11},
            {'image_id': 1, 'question': 'Unanswered?', 'question_id': 12},
            {'image_id': 3, 'question': 'No image file?', 'question_id': 30},
            {'question': 'no image id', 'question_id': 40},
        ]})
    red = ['red'] * 7 + ['dark red'] * 2 + ['maroon']
    tie = ['3', 'two', 'two', 'three', 'two', 'three', 'three', '2', 'two', 'three']
    annotations = _dump(tmp_path / 'v2_mscoco_val2014_annotations.json', {'annotations': [
        {'question_id': 10, 'multiple_choice_answer': 'red',
         'answers': [{'answer': a, 'answer_id': i + 1} for i, a in enumerate(red)]},
        # No majority given: the commonest human answer, ties ('two' 4, 'three' 4) by first
        # appearance -> 'two'.
        {'question_id': 20, 'answers': [{'answer': a} for a in tie]},
        {'question_id': 11, 'multiple_choice_answer': 'yes',
         'answers': [{'answer': 'yes'}] * 10},
        {'question_id': 30, 'multiple_choice_answer': 'no', 'answers': [{'answer': 'no'}] * 10},
        {'multiple_choice_answer': 'orphan'},
    ]})
    return questions, annotations, red, tie


def test_vqa_v2_questions_answers_and_images(tmp_path):
    questions, annotations, red, tie = _vqa_files(tmp_path)
    examples, counts = _build(tmp_path, 'vqa', format='vqa_v2', path=questions,
                              annotations_path=annotations, image_root=str(tmp_path / 'coco'))
    by_key = {ex['image_key'].decode(): ex for ex in examples}
    assert set(by_key) == {'val2014/COCO_val2014_000000000001.jpg',
                           'val2014/COCO_val2014_000000000002.jpg'}
    one = by_key['val2014/COCO_val2014_000000000001.jpg']
    assert _colour(one['image']) == 'red'
    assert _texts(one['qa']['question']) == ['What colour is it?', 'Is it round?']
    assert _texts(one['qa']['answer']) == ['red', 'yes']
    # Per question its human answers: a ragged [Q, None] string tensor.
    assert [_texts(a) for a in one['qa']['answers'].to_list()] == [red, ['yes'] * 10]
    assert list(one['qa']['question_id']) == [10, 11]
    assert len(one['captions']) == 0 and one['objects']['bbox'].shape == (0, 4)
    two = by_key['val2014/COCO_val2014_000000000002.jpg']
    assert _colour(two['image']) == 'green'
    assert _texts(two['qa']['answer']) == ['two']
    assert [_texts(a) for a in two['qa']['answers'].to_list()] == [tie]
    # What VQA's soft score needs is stored: min(1, humans who said it / 3) for a few answers.
    stored = _texts(one['qa']['answers'].to_list()[0])
    assert [min(1.0, stored.count(a) / 3) for a in ('red', 'dark red', 'maroon', 'blue')] == \
        [1.0, 2 / 3, 1 / 3, 0.0]
    # Question 12 is not annotated; image 3 has no file; one question and one annotation have
    # no ids.
    assert counts == {'bad': {'missing_file': 1},
                      'dropped_parts': {'no_answer': 1, 'malformed_record': 2}, 'accepted': 2}


def test_vqa_v2_test_split_without_answers_and_a_custom_pattern(tmp_path):
    _png(tmp_path / 'images/img_7.png', 'blue')
    questions = _dump(tmp_path / 'questions.json', {'questions': [
        {'image_id': 7, 'question': 'What is it?', 'question_id': 70}]})
    examples, counts = _build(tmp_path, 'vqa_test', format='vqa_v2', path=questions,
                              image_pattern='images/img_{image_id}.png')
    assert len(examples) == 1 and counts == {'accepted': 1}
    qa = examples[0]['qa']
    assert _texts(qa['question']) == ['What is it?'] and _texts(qa['answer']) == ['']
    assert qa['answers'].to_list() == [[]] and list(qa['question_id']) == [70]
    assert _colour(examples[0]['image']) == 'blue'
    # The default pattern needs the questions file's data_subtype: an error naming the file.
    with pytest.raises(ValueError, match='questions.json has no "data_subtype"'):
        _build(tmp_path, 'vqa_no_subtype', format='vqa_v2', path=questions)


def test_vqa_v2_is_read_by_the_vqa_finetuning_reader(tmp_path):
    from configs.finetune import vqa as vqa_config
    from xfm_jax.finetuning import vqa
    questions, annotations, _, _ = _vqa_files(tmp_path)
    config = vqa_config.get_config('tiny')
    config.data.tfds_data_dir = str(tmp_path / 'tfds')
    config.data.user_sources = {'my_vqa': {
        'format': 'vqa_v2', 'path': questions, 'annotations_path': annotations,
        'image_root': str(tmp_path / 'coco')}}
    config.task.source = 'my_vqa'
    images, image_index, texts, answers = vqa.read_questions(config, 'train', 0)
    assert images.shape[0] == 2
    got = {q: (int(i), a) for q, i, a in zip(texts, image_index, answers)}  # stored order
    assert {q: a for q, (_, a) in got.items()} == {
        'What colour is it?': 'red', 'Is it round?': 'yes', 'How many shapes?': 'two'}
    assert got['What colour is it?'][0] == got['Is it round?'][0] != got['How many shapes?'][0]


def _refcoco_file(tmp_path):
    _png(tmp_path / 'train2014/a.png', 'red')  # 40 x 30
    _png(tmp_path / 'train2014/b.png', 'blue')
    refs = _dump(tmp_path / 'refcoco+_train.json', [
        {'image': 'train2014/a.png', 'text': 'left red thing', 'bbox': [0, 0, 10, 8],
         'ref_id': 1},
        # Partly outside (y 10..50 in a 30 px image): clipped to h 20.
        {'image': 'train2014/a.png', 'sentences': ['the blue one', {'sent': 'blue box'}],
         'bbox': [20, 10, 12, 40], 'ref_id': 2},
        {'image': 'train2014/a.png', 'text': 'three numbers', 'bbox': [1, 2, 3], 'ref_id': 3},
        {'image': 'train2014/b.png', 'text': ' ', 'bbox': [0, 0, 5, 5], 'ref_id': 4},
    ])
    return refs


def test_refcoco_expressions_become_boxed_phrases(tmp_path):
    refs = _refcoco_file(tmp_path)
    examples, counts = _build(tmp_path, 'refcoco', format='refcoco', path=refs)
    assert len(examples) == 1
    ex = examples[0]
    assert ex['image_key'].decode() == 'train2014/a.png' and _colour(ex['image']) == 'red'
    assert _texts(ex['objects']['phrase']) == ['left red thing', 'the blue one', 'blue box']
    np.testing.assert_allclose(ex['objects']['bbox'], [[0, 0, 10, 8], [20, 10, 12, 20],
                                                       [20, 10, 12, 20]])
    assert len(ex['captions']) == 0
    # ref 3's box; ref 4's blank text, after which image b has no box left.
    assert counts == {'bad': {'no_boxes': 1}, 'dropped_parts': {'bad_box': 1, 'empty_text': 1},
                      'accepted': 1}


def _folder_fields(tmp_path):
    for path, colour in (('train/cat/1.png', 'red'), ('train/cat/2.png', 'green'),
                         ('train/dog_house/3.png', 'blue'), ('val/cat/4.png', 'yellow'),
                         ('val/zebra/5.png', 'red')):
        _png(tmp_path / path, colour)
    (tmp_path / 'train/cat/notes.txt').write_text('not an image')
    (tmp_path / 'train/cat/.DS_Store').write_bytes(b'hidden')
    _png(tmp_path / 'train/stray.png', 'red')
    fields = dict(format='image_folder', path=str(tmp_path / 'train'),
                  validation_path=str(tmp_path / 'val'))
    return fields


def test_image_folder_labels_and_captions(tmp_path):
    fields = _folder_fields(tmp_path)
    examples, counts = _build(tmp_path, 'folders', **fields)
    got = sorted((ex['image_key'].decode(), int(ex['label']), _texts(ex['captions']),
                  _colour(ex['image'])) for ex in examples)
    assert got == [('cat/1.png', 0, ['cat'], 'red'), ('cat/2.png', 0, ['cat'], 'green'),
                   ('dog_house/3.png', 1, ['dog house'], 'blue')]
    assert counts == {'bad': {'not_an_image': 1, 'no_class': 1}, 'accepted': 3}
    examples, counts = _build(tmp_path, 'folders', 'validation', **fields)
    assert [(int(ex['label']), _colour(ex['image'])) for ex in examples] == [(0, 'yellow')]
    assert counts == {'bad': {'unknown_class': 1}, 'accepted': 1}  # zebra is no training class
    builder = tfds.builder('xfm_user', data_dir=str(tmp_path / 'tfds'),
                           config=user.UserConfig(name='folders', **fields))
    assert builder.info.features['label'].names == ['cat', 'dog_house']


def test_the_evaluators_read_refcoco_boxes_and_folder_labels(tmp_path):
    """What grounding (phrases, normalised (cx, cy, w, h) boxes) and the probes / zero-shot
    classification (labels, class names) read, via evaluators/data.py."""
    from configs.finetune import image_classification
    from xfm_jax.evaluators import data as eval_data
    config = image_classification.get_config('tiny')
    config.data.tfds_data_dir = str(tmp_path / 'tfds')
    config.data.vocab.path = str(tmp_path / 'vocab.txt')
    config.data.user_sources = {
        'refs': {'format': 'refcoco', 'path': _refcoco_file(tmp_path)},
        'folders': _folder_fields(tmp_path)}
    refs = eval_data.load(config, 'refs', 'train')
    assert refs.phrases == ('left red thing', 'the blue one', 'blue box')
    np.testing.assert_array_equal(refs.phrase_image, [0, 0, 0])
    # [0, 0, 10, 8] and [20, 10, 12, 20] (clipped) in a 40 x 30 image.
    np.testing.assert_allclose(refs.phrase_boxes, [[5 / 40, 4 / 30, 10 / 40, 8 / 30],
                                                   [26 / 40, 20 / 30, 12 / 40, 20 / 30],
                                                   [26 / 40, 20 / 30, 12 / 40, 20 / 30]],
                               rtol=1e-6)
    folders = eval_data.load(config, 'folders', 'train')
    assert folders.label_names == ('cat', 'dog_house')
    assert sorted(folders.labels) == [0, 0, 1]
    for image, label in enumerate(folders.labels):  # each image's caption is its class name
        caption = folders.captions[list(folders.caption_image).index(image)]
        assert caption == folders.label_names[label].replace('_', ' ')


def test_nlvr2_official_layout_and_explicit_images(tmp_path):
    root = tmp_path / 'images'
    _png(root / 'train/12/train-5-0-img0.png', 'red')
    _png(root / 'train/12/train-5-0-img1.png', 'green')
    _png(root / 'dev-3-1-img0.png', 'blue')
    _png(root / 'dev-3-1-img1.png', 'yellow')
    records = [
        {'identifier': 'train-5-0-0', 'directory': 12, 'sentence': 'The left is red.',
         'label': 'True'},
        {'identifier': 'train-5-0-1', 'directory': 12, 'sentence': 'Both are blue.',
         'label': 'False'},
        {'identifier': 'dev-3-1-2', 'sentence': 'A flat file pair.', 'label': 'true'},
        {'identifier': 'x-1', 'sentence': 'Explicit paths.', 'label': False,
         'images': ['dev-3-1-img1.png', 'train/12/train-5-0-img0.png']},
        {'identifier': 'train-9-0-0', 'sentence': 'No such images.', 'label': 'True'},
        {'identifier': 'train-5-0-3', 'directory': 12, 'sentence': 'Odd label.',
         'label': 'maybe'},
        {'identifier': 'train-5-0-4', 'directory': 12, 'sentence': '', 'label': 'True'},
        {'identifier': 'x-2', 'sentence': 'One image.', 'label': 'True', 'images': ['a.png']},
    ]
    path = tmp_path / 'train.json'
    path.write_text('\n'.join(json.dumps(r) for r in records))  # JSONL
    examples, counts = _build(tmp_path, 'nlvr2', format='nlvr2', path=str(path),
                              image_root=str(root))
    got = [(ex['pair_key'].decode(), ex['sentence'].decode(), int(ex['label']),
            _colour(ex['left_image']), _colour(ex['right_image']), ex['left_key'].decode(),
            ex['right_key'].decode()) for ex in examples]
    assert sorted(got) == sorted([
        ('train-5-0-0', 'The left is red.', 1, 'red', 'green', 'train/12/train-5-0-img0.png',
         'train/12/train-5-0-img1.png'),
        ('train-5-0-1', 'Both are blue.', 0, 'red', 'green', 'train/12/train-5-0-img0.png',
         'train/12/train-5-0-img1.png'),
        ('dev-3-1-2', 'A flat file pair.', 1, 'blue', 'yellow', 'dev-3-1-img0.png',
         'dev-3-1-img1.png'),
        ('x-1', 'Explicit paths.', 0, 'yellow', 'red', 'dev-3-1-img1.png',
         'train/12/train-5-0-img0.png'),
    ])
    assert counts == {'bad': {'missing_file': 1, 'bad_label': 1, 'no_text': 1,
                              'malformed_record': 1},
                      'dropped_parts': {'empty_text': 1}, 'accepted': 4}


def test_bad_files_are_errors_naming_the_file(tmp_path):
    (tmp_path / 'broken.json').write_text('[{"image": "a.png", "caption": "x"},')
    with pytest.raises(ValueError, match='broken.json starts with "\\[" but is not'):
        _build(tmp_path, 'broken', format='karpathy', path=str(tmp_path / 'broken.json'))
    with pytest.raises(FileNotFoundError, match='nowhere.json'):
        _build(tmp_path, 'nowhere', format='refcoco', path=str(tmp_path / 'nowhere.json'))
    questions = _dump(tmp_path / 'q.json', {'data_subtype': 'val2014', 'items': []})
    with pytest.raises(ValueError, match="q.json has no list 'questions'"):
        _build(tmp_path, 'no_questions', format='vqa_v2', path=questions)
    with pytest.raises(FileNotFoundError, match='annotations_path'):
        _build(tmp_path, 'no_annotations', format='vqa_v2',
               path=_dump(tmp_path / 'q2.json', {'data_subtype': 'x', 'questions': []}),
               annotations_path=str(tmp_path / 'absent.json'))
    with pytest.raises(FileNotFoundError, match='is not a folder'):
        _build(tmp_path, 'no_folder', format='image_folder', path=str(tmp_path / 'absent'))


def test_user_formats_name_their_tasks():
    from xfm_jax.data import tasks
    config = {'user_sources': {
        'vqa': {'format': 'vqa_v2'}, 'refs': {'format': 'refcoco'},
        'pairs': {'format': 'nlvr2'}, 'ret': {'format': 'karpathy'}}}
    names = set(tasks.task_names(config))
    assert {'vqa_vqa_image_text', 'refs_region', 'ret_image_text', 'ret_image'} <= names
    assert not any(n.startswith('pairs_') for n in names)  # image pairs: fine-tuning only
    assert tasks.sources(config)['pairs'].schema == 'image_pair'


def test_vqa_soft_credit_by_hand():
    from xfm_jax.finetuning import vqa
    humans = [['red'] * 7 + ['dark red'] * 2 + ['maroon'], ['two', 'three', 'three', '2']]
    credit = vqa.soft_credit(humans, ('blue', 'dark red', 'maroon', 'red', 'three', 'two'))
    np.testing.assert_allclose(credit, [[0, 2 / 3, 1 / 3, 1, 0, 0], [0, 0, 0, 0, 2 / 3, 1 / 3]],
                               rtol=1e-6)


def test_vqa_v2_evaluation_rows_carry_the_soft_credit(tmp_path):
    """Evaluation splits of a VQA v2 source are scored with min(1, humans / 3) per candidate;
    training keeps only the majority answer; one-answer sources keep one-hot scoring."""
    from configs.finetune import vqa as vqa_config
    from xfm_jax.finetuning import vqa
    questions, annotations, red, tie = _vqa_files(tmp_path)
    config = vqa_config.get_config('tiny')
    config.data.tfds_data_dir = str(tmp_path / 'tfds')
    config.data.user_sources = {'my_vqa': {
        'format': 'vqa_v2', 'path': questions, 'annotations_path': annotations,
        'validation_path': questions, 'validation_annotations_path': annotations,
        'image_root': str(tmp_path / 'coco')}}
    config.task.source = 'my_vqa'
    train = vqa.read(config, 'train', 0)
    assert train.targets == {}
    evaluation = vqa.read(config, 'validation', 0)
    assert evaluation.label_names == ('red', 'two', 'yes')  # training answers, ties by name
    humans = {'What colour is it?': red, 'How many shapes?': tie, 'Is it round?': ['yes'] * 10}
    for q, question in enumerate(evaluation.display['question']):
        given = humans[question]
        want = [min(1.0, given.count(a) / 3) for a in evaluation.label_names]
        np.testing.assert_allclose(evaluation.targets['answer_credit'][q], want, rtol=1e-6)
