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

from xfm_jax import paths

_LOG_FIRST = 3  # dropped records logged in full per reason; the rest are only counted
# Source images above this many pixels are refused (decompression bombs: a 100-megapixel image
# already decodes to 300 MB); builders may set a smaller cap.
MAX_IMAGE_PIXELS = 100_000_000

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
    if not paths.resolve(path).exists():
        raise FileNotFoundError(f'{what} not found at {path}. Install it with: {install}')
    return path


class BadRecord(Exception):
    """A source record a builder cannot use; ``reason`` is the key it is counted under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f'{reason}: {detail}')
        self.reason = reason


class DropLog:
    """Build-time accounting of one split, each record counted once: ``counts`` holds the dropped
    records per reason (``info.metadata['bad']``, from where the pipeline's ``bad_counts()``
    starts), ``converted`` the kept images that needed a conversion (grey, CMYK, alpha, palette,
    16-bit, float), ``parts`` the unusable parts of kept records (a caption, a box, a question,
    a frame), ``accepted`` the records kept. The first few of each reason are logged with their
    source."""

    def __init__(self, name: str):
        self.name = name
        self.counts: collections.Counter = collections.Counter()
        self.converted: collections.Counter = collections.Counter()
        self.parts: collections.Counter = collections.Counter()
        self.accepted = 0

    @staticmethod
    def _count(counter, what: str, name: str, reason: str, source: str, detail: str) -> None:
        if counter[reason] < _LOG_FIRST:
            logging.warning('data build %s: %s %s in %s %s', name, what, reason, source, detail)
        counter[reason] += 1

    def add(self, reason: str, source: str, detail: str = '') -> None:
        """One dropped record."""
        self._count(self.counts, 'dropped record:', self.name, reason, source, detail)

    def part(self, reason: str, source: str, detail: str = '') -> None:
        """One dropped part of a record that is kept (or dropped for another reason)."""
        self._count(self.parts, 'dropped part:', self.name, reason, source, detail)

    def convert(self, kind: str, source: str) -> None:
        """One kept image that needed a conversion of ``kind``."""
        self._count(self.converted, 'converted image:', self.name, kind, source, '')

    @classmethod
    def from_accounting(cls, name: str, counts: dict) -> 'DropLog':
        """A DropLog holding a split's :func:`accounting` (e.g. to print its summary)."""
        log = cls(name)
        log.counts.update(counts.get('bad', {}))
        log.converted.update(counts.get('converted', {}))
        log.parts.update(counts.get('dropped_parts', {}))
        log.accepted = counts.get('accepted') or 0
        return log

    def summary(self) -> str:
        """'NAME: accepted N of M records; dropped {...}; converted {...}; dropped parts {...}'."""
        line = (f'{self.name}: accepted {self.accepted} of '
                f'{self.accepted + sum(self.counts.values())} records')
        for what, counter in (('dropped', self.counts), ('converted', self.converted),
                              ('dropped parts', self.parts)):
            if counter:
                line += f'; {what} {dict(sorted(counter.items()))}'
        return line


# Modes PIL converts to RGB without loss of meaning; counted (never silent) but kept.
_CONVERTED_MODES = {'L': 'grey', 'LA': 'grey', 'CMYK': 'cmyk', 'RGBA': 'alpha', 'P': 'palette',
                    'PA': 'alpha', 'YCbCr': 'ycbcr'}
_WIDE_INT_MODES = ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N')  # 16-bit PNGs open as these


def _to_8bit(image: Image.Image, log: DropLog, name: str) -> Image.Image:
    """16-bit grey (0..65535) and float (0..1 when its maximum is at most 1, else 0..255)
    images as 8-bit grey; PIL's own conversion clips them to white or rounds them to black."""
    array = np.asarray(image, np.float64)
    if not np.isfinite(array).all():
        raise BadRecord('undecodable_image', 'non-finite pixel values')
    if image.mode == 'F':
        log.convert('float', name)
        array = array * 255.0 if array.max(initial=0.0) <= 1.0 else array
    else:
        log.convert('16bit', name)
        array = array / 257.0  # 65535 -> 255
    return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), 'L')


def load_image(source, log: DropLog, name: str, max_side: int = 0,
               max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Opens a path (local or gs://) or bytes fully (truncation surfaces here) and returns RGB,
    at most ``max_side`` pixels on its longer side (0: as stored; aspect kept, never enlarged).

    Sources over ``max_pixels`` are refused before decoding, so decode memory stays bounded.
    Alpha is composited onto white; grey, CMYK, palette, 16-bit and float images are converted
    and counted (``log.convert``). ``info['original_size']`` is the source's (width, height),
    the frame of boxes given in source pixels. Raises BadRecord('missing_file' |
    'undecodable_image' | 'too_many_pixels').
    """
    if isinstance(source, (str, os.PathLike)):
        path = paths.resolve(source)
        if not path.is_file():
            raise BadRecord('missing_file', os.fspath(path))
        source = path.read_bytes()
    try:
        image = Image.open(io.BytesIO(source))  # reads the header only
        if image.width * image.height > max_pixels:
            raise BadRecord('too_many_pixels', f'{image.width}x{image.height} is over '
                            f'{max_pixels} pixels')
        original_size = image.size
        if max_side:
            image.draft('RGB', (max_side, max_side))  # JPEG: decode at a reduced scale
        image.load()
    except Image.DecompressionBombError as error:
        raise BadRecord('too_many_pixels', f'{error}') from error
    except (OSError, ValueError, SyntaxError) as error:
        raise BadRecord('undecodable_image', f'{error}') from error
    if image.width == 0 or image.height == 0:
        raise BadRecord('undecodable_image', f'empty image {image.size}')
    if image.mode in _WIDE_INT_MODES or image.mode == 'F':
        image = _to_8bit(image, log, name).convert('RGB')
    elif image.mode != 'RGB':
        log.convert(_CONVERTED_MODES.get(image.mode, image.mode.lower()), name)
        if 'A' in image.getbands() or image.info.get('transparency') is not None:
            rgba = image.convert('RGBA')
            image = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
            image.alpha_composite(rgba)
        image = image.convert('RGB')
    if max_side and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.BICUBIC)
    image.info['original_size'] = original_size
    return image


def drop_log(builder: tfds.core.DatasetBuilder, split: str) -> DropLog:
    """A DropLog whose counts are saved in the dataset's metadata under ``bad``, ``converted``
    and ``dropped_parts`` [split] (the builder's ``_info`` must pass
    ``metadata=tfds.core.MetadataDict()``; call :func:`finish` when the split is written)."""
    config = builder.builder_config
    log = DropLog(f'{builder.name}/{config.name + "/" if config else ""}{split}')
    for key, counter in (('bad', log.counts), ('converted', log.converted),
                         ('dropped_parts', log.parts)):
        builder.info.metadata.setdefault(key, {})[split] = counter
    return log


def finish(builder: tfds.core.DatasetBuilder, split: str, log: DropLog) -> None:
    """Records the split's accepted count and logs its one-line summary ("accepted N of M")."""
    builder.info.metadata.setdefault('accepted', {})[split] = log.accepted
    logging.info('data build %s', log.summary())


def accounting(metadata, split: str) -> dict:
    """A built split's counts, read back from its metadata: {'bad': dropped records,
    'converted': converted images, 'dropped_parts': parts of records, each {reason: n} and
    left out when empty, 'accepted': records kept}."""
    out = {key: dict(metadata[key][split]) for key in ('bad', 'converted', 'dropped_parts')
           if metadata.get(key, {}).get(split)}
    return {**out, 'accepted': metadata.get('accepted', {}).get(split)}
