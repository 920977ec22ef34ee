"""``xfm_easy_vqa``: easy-VQA (``pip install easy-vqa``), 5,000 64x64 images of one coloured shape
with 48,248 questions over 13 answers, read from the installed package's files.

Each image gets its question-answer pairs (``qa``, for the ``vqa_image_text`` task) and a caption
made from its answers: "a {color} {shape}" from the answers to its colour and shape questions
("a blue shape" / "a circle" when one of them is never asked; no caption when neither is).
Splits: train (4,000 images, 38,575 questions) and validation (the package's test split).
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from xfm_jax.data.builders import schema

INSTALL = 'pip install easy-vqa'
COLORS = ('red', 'green', 'blue', 'yellow', 'gray', 'teal', 'black', 'brown')
SHAPES = ('circle', 'rectangle', 'triangle')


def data_root() -> str:
    """The installed package's data folder; FileNotFoundError naming the install command."""
    # find_spec locates the package without importing it.
    spec = importlib.util.find_spec('easy_vqa')
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f'The easy-VQA data set (python package easy_vqa) is not '
                                f'installed. Install it with: {INSTALL}')
    return schema.require(os.path.join(os.path.dirname(spec.origin), 'data'), INSTALL,
                          'easy-VQA data folder')


def caption(answers: list[str]) -> list[str]:
    color = next((a for a in answers if a in COLORS), None)
    shape = next((a for a in answers if a in SHAPES), None)
    if color is None and shape is None:
        return []
    return [f'a {color} {shape or "shape"}' if color else f'a {shape}']


class XfmEasyVqa(tfds.core.GeneratorBasedBuilder):
    """easy-VQA images with captions and question-answer pairs."""

    VERSION = tfds.core.Version('1.0.0')

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=schema.image_text_features(
                qa=tfds.features.Sequence({'question': tfds.features.Text(),
                                           'answer': tfds.features.Text()})),
            metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        del dl_manager  # reads the installed package
        root = data_root()
        return {split: self._generate_examples(os.path.join(root, folder), split)
                for split, folder in (('train', 'train'), ('validation', 'test'))}

    def _generate_examples(self, folder: str, split: str):
        log = schema.drop_log(self, split)
        path = schema.require(os.path.join(folder, 'questions.json'), INSTALL, 'easy-VQA questions')
        with open(path) as f:
            questions = json.load(f)
        per_image = collections.defaultdict(list)
        for question, answer, image_id in questions:
            per_image[int(image_id)].append((question, answer))
        for image_id, qa in sorted(per_image.items()):
            image_path = os.path.join(folder, 'images', f'{image_id}.png')
            try:
                image = schema.load_image(image_path, log, image_path)
            except schema.BadRecord as bad:
                log.add(bad.reason, image_path, str(bad))
                continue
            key = f'{split}-{image_id}'
            yield key, {
                'image': schema.jpeg_bytes(image), 'image_key': key,
                'captions': caption([a for _, a in qa]),
                'objects': {'bbox': np.zeros((0, 4), np.float32), 'phrase': []},
                'qa': {'question': [q for q, _ in qa], 'answer': [a for _, a in qa]},
            }
