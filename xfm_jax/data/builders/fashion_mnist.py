"""``xfm_fashion_mnist``: Fashion-MNIST (``apt-get install dataset-fashion-mnist``): 70,000 28x28
grey images of 10 clothing classes, read from the installed IDX files.

Each image is stored as RGB with its class ``label`` (for classification) and the caption
"a photo of a {class name}" (for image-text contrastive pre-training, CLIP-style).
Splits: train (60,000) and validation (the 10,000 test images).
"""

from __future__ import annotations

import gzip
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from xfm_jax.data.builders import schema

INSTALL = 'apt-get install dataset-fashion-mnist'
DEFAULT_DIR = '/usr/share/datasets/fashion-mnist'
CLASSES = ('t-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker',
           'bag', 'ankle boot')
_FILES = {'train': 'train', 'validation': 't10k'}
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049  # IDX headers: uint8 data, 3 / 1 dimensions


def read_idx(path: str, magic: int) -> np.ndarray:
    """A gzipped IDX file (big-endian int32 magic and dimensions, then uint8 data)."""
    with gzip.open(schema.require(path, INSTALL, 'Fashion-MNIST file'), 'rb') as f:
        data = f.read()
    found, *dims = np.frombuffer(data, '>i4', count=1 + (magic & 0xFF))
    if found != magic:
        raise ValueError(f'{path}: IDX magic {found}, expected {magic}.')
    return np.frombuffer(data, np.uint8, offset=4 * (1 + len(dims))).reshape(dims)


def caption(label: int) -> str:
    name = CLASSES[label]
    return f'a photo of {"an" if name[0] in "aeiou" else "a"} {name}'


class XfmFashionMnist(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST images with class labels and class-name captions."""

    VERSION = tfds.core.Version('1.0.0')

    def __init__(self, *, source_dir: str = DEFAULT_DIR, **kwargs):
        self.source_dir = source_dir
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=schema.image_text_features(label=tfds.features.ClassLabel(names=CLASSES)))

    def _split_generators(self, dl_manager):
        del dl_manager  # reads the installed files
        return {split: self._generate_examples(prefix) for split, prefix in _FILES.items()}

    def _generate_examples(self, prefix: str):
        images = read_idx(os.path.join(self.source_dir, f'{prefix}-images-idx3-ubyte.gz'),
                          _IMAGE_MAGIC)
        labels = read_idx(os.path.join(self.source_dir, f'{prefix}-labels-idx1-ubyte.gz'),
                          _LABEL_MAGIC)
        if len(images) != len(labels):
            raise ValueError(f'{self.source_dir}/{prefix}: {len(images)} images but '
                             f'{len(labels)} labels.')
        for i, (pixels, label) in enumerate(zip(images, labels)):
            key = f'{prefix}-{i}'
            yield key, {
                'image': schema.jpeg_bytes(Image.fromarray(pixels)), 'image_key': key,
                'captions': [caption(int(label))],
                'objects': {'bbox': np.zeros((0, 4), np.float32), 'phrase': []},
                'label': int(label),
            }
