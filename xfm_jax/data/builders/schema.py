"""The canonical TFDS feature schemas every builder writes, so one set of task preprocessors
serves all sources. Boxes are (x, y, w, h) in pixels of the stored image."""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds

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
