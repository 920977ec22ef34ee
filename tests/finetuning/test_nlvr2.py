"""NLVR fine-tuning on a user ``nlvr2`` source (builders/user.py): the reader keeps the file's
statements, labels and image pairs (each image held once). (The task model and its training on
such rows: test_tasks.py's NLVR case.)"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from xfm_jax.finetuning import common, nlvr

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])
COLOURS = {'red': (220, 20, 20), 'green': (20, 200, 20), 'blue': (20, 20, 220),
           'yellow': (230, 230, 20)}


def _png(path, colour):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new('RGB', (24, 16), COLOURS[colour]).save(path, format='PNG')


def _files(tmp_path):
    """NLVR2's official layout: train images in numbered folders, dev images flat."""
    root = tmp_path / 'images'
    _png(root / 'train/3/train-1-0-img0.png', 'red')
    _png(root / 'train/3/train-1-0-img1.png', 'green')
    _png(root / 'dev/dev-2-0-img0.png', 'blue')
    _png(root / 'dev/dev-2-0-img1.png', 'yellow')
    train = [
        {'identifier': 'train-1-0-0', 'directory': 3, 'sentence': 'a red circle',
         'label': 'True'},
        {'identifier': 'train-1-0-1', 'directory': 3, 'sentence': 'a blue square',
         'label': 'False'},
        {'identifier': 'dev-2-0-0', 'sentence': 'a yellow circle', 'label': 'True'},
        # X-VLM's form: explicit paths (the dev right image on the left, the train left one on
        # the right).
        {'sentence': 'a green square', 'label': 'False',
         'images': ['dev/dev-2-0-img1.png', 'train/3/train-1-0-img0.png']},
    ]
    (tmp_path / 'train.json').write_text(json.dumps(train))
    (tmp_path / 'dev.json').write_text('\n'.join(json.dumps(r) for r in train[:3]))
    return root


def _config(tmp_path):
    from configs.finetune import nlvr as nlvr_config
    root = _files(tmp_path)
    config = nlvr_config.get_config('tiny')
    config.data.tfds_data_dir = str(tmp_path / 'tfds')
    config.data.vocab.path = str(tmp_path / 'vocab.txt')
    config.data.user_sources.nlvr2.update(path=str(tmp_path / 'train.json'),
                                          validation_path=str(tmp_path / 'dev.json'),
                                          image_root=str(root))
    config.task.source = 'nlvr2'
    return config


def test_reader_keeps_statements_labels_and_shared_images(tmp_path):
    config = _config(tmp_path)
    examples = nlvr.read(config, 'train', 0)
    size = config.model.vision.image_size
    assert examples.images.shape == (4, size, size, 3)  # 8 sides, 4 distinct images
    expected_pixels = {c: (np.array(v) / 255 - CLIP_MEAN) / CLIP_STD for c, v in COLOURS.items()}

    def colour(index):
        mean = examples.images[index].mean((0, 1))
        found = min(expected_pixels, key=lambda c: np.abs(mean - expected_pixels[c]).sum())
        np.testing.assert_allclose(mean, expected_pixels[found], atol=0.08)
        return found

    # Rows come in TFDS's stored order: compare as a set of (ids, left, right, label).
    tokenizer = common.tokenizer(config)
    sentences = ['a red circle', 'a blue square', 'a yellow circle', 'a green square']
    ids = tokenizer(sentences)
    expected = {(tuple(ids[0]), 'red', 'green', 1), (tuple(ids[1]), 'red', 'green', 0),
                (tuple(ids[2]), 'blue', 'yellow', 1), (tuple(ids[3]), 'yellow', 'red', 0)}
    rows = examples.rows
    got = {(tuple(rows['input_ids'][i]), colour(rows['left_index'][i]),
            colour(rows['right_index'][i]), int(rows['label'][i])) for i in range(len(examples))}
    assert got == expected
    np.testing.assert_array_equal(rows['attention_mask'], tokenizer.mask(rows['input_ids']))
    assert examples.label_names == ('false', 'true')
    assert len(nlvr.read(config, 'validation', 2)) == 2  # max_examples counts statements


def test_an_empty_nlvr2_path_is_an_error_naming_the_key(tmp_path):
    from configs.finetune import nlvr as nlvr_config
    config = nlvr_config.get_config('tiny')
    config.data.tfds_data_dir = str(tmp_path / 'tfds')
    config.task.source = 'nlvr2'
    with pytest.raises(ValueError, match='data.user_sources.nlvr2.path is empty'):
        nlvr.read(config, 'train', 0)
