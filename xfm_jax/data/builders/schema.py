"""The canonical TFDS feature schemas every builder writes, so one set of task preprocessors
serves all sources. Boxes are (x, y, w, h) in pixels of the stored image."""

from __future__ import annotations

import collections
import io
import logging
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

_LOG_FIRST = 3  # dropped records logged in full per reason; the rest are only counted

IMAGE = tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg')
OBJECTS = tfds.features.Sequence({
    'bbox': tfds.features.Tensor(shape=(4,), dtype=np.float32),
    'phrase': tfds.features.Text(),
})


def image_text_features(**extra) -> tfds.features.FeaturesDict:
    """One image with zero or more whole-image captions (and optionally region objects)."""
    return tfds.features.FeaturesDict({
        'image': IMAGE,
        'image_key': tfds.features.Text(),
        'captions': tfds.features.Sequence(tfds.features.Text()),
        'objects': OBJECTS,
        **extra,
    })


def image_pair_features() -> tfds.features.FeaturesDict:
    """Two images and one statement about them, true or false (NLVR2); ``*_key`` name the
    image files (equal keys: the same image) and ``pair_key`` the record."""
    return tfds.features.FeaturesDict({
        'left_image': IMAGE,
        'right_image': IMAGE,
        'left_key': tfds.features.Text(),
        'right_key': tfds.features.Text(),
        'pair_key': tfds.features.Text(),
        'sentence': tfds.features.Text(),
        'label': tfds.features.ClassLabel(names=('false', 'true')),
    })


def video_features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        'frames': tfds.features.Sequence(IMAGE),
        'video_key': tfds.features.Text(),
        'captions': tfds.features.Sequence(tfds.features.Text()),
    })


def text_features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({'text': tfds.features.Text()})


def jpeg_bytes(image, quality: int = 95) -> io.BytesIO:
    """PIL image -> an in-memory RGB JPEG that tfds stores without re-encoding."""
    buffer = io.BytesIO()
    image.convert('RGB').save(buffer, format='JPEG', quality=quality)
    buffer.seek(0)
    return buffer


def require(path: str, install: str, what: str) -> str:
    """``path`` if it exists, else FileNotFoundError naming the command that installs it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f'{what} not found at {path}. Install it with: {install}')
    return path


class BadRecord(Exception):
    """A source record a builder cannot use; ``reason`` is the key it is counted under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f'{reason}: {detail}')
        self.reason = reason


class DropLog:
    """Build-time accounting: counts dropped records (and converted images) per reason and logs
    the first few with their source. ``counts`` goes into the dataset's metadata
    (``info.metadata['bad']``) and from there into the pipeline's ``bad_counts()``."""

    def __init__(self, name: str):
        self.name = name
        self.counts: collections.Counter = collections.Counter()

    def add(self, reason: str, source: str, detail: str = '') -> None:
        if self.counts[reason] < _LOG_FIRST:
            logging.warning('data build %s: %s in %s %s', self.name, reason, source, detail)
        self.counts[reason] += 1


# Modes PIL converts without loss of meaning; counted (never silent) but kept.
_CONVERTED_MODES = {'L': 'grey', 'LA': 'grey', 'I': 'grey', 'I;16': 'grey', 'CMYK': 'cmyk',
                    'RGBA': 'alpha', 'P': 'palette', 'PA': 'alpha', 'YCbCr': 'ycbcr'}


def load_image(source, log: DropLog, name: str) -> Image.Image:
    """Opens a path or bytes fully (truncation surfaces here) and returns RGB.

    Alpha is composited onto white; grey, CMYK and palette images are converted. Conversions are
    counted as ``converted_<kind>``. Raises BadRecord('missing_file' | 'undecodable_image').
    """
    if isinstance(source, str) and not os.path.exists(source):
        raise BadRecord('missing_file', source)
    try:
        image = Image.open(source if isinstance(source, str) else io.BytesIO(source))
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadRecord('undecodable_image', f'{error}') from error
    if image.width == 0 or image.height == 0:
        raise BadRecord('undecodable_image', f'empty image {image.size}')
    if image.mode != 'RGB':
        log.add(f'converted_{_CONVERTED_MODES.get(image.mode, image.mode.lower())}', name)
        if 'A' in image.getbands() or image.info.get('transparency') is not None:
            rgba = image.convert('RGBA')
            image = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
            image.alpha_composite(rgba)
        image = image.convert('RGB')
    return image


def drop_log(builder: tfds.core.DatasetBuilder, split: str) -> DropLog:
    """A DropLog whose counts are saved as ``info.metadata['bad'][split]`` (the builder's
    ``_info`` must pass ``metadata=tfds.core.MetadataDict()``)."""
    log = DropLog(f'{builder.name}/{split}')
    builder.info.metadata.setdefault('bad', {})[split] = log.counts
    return log
