"""``xfm_user``: the user's own data from files, one builder config per data set (schemas in
docs/data.md). Formats:

  ``jsonl``        image-text pairs: one JSON object per line,
                   {"image": path | base64 | "data:...;base64,...", "caption": str | [str, ...]}
  ``coco``         COCO captions JSON: {"images": [{"id", "file_name"}],
                   "annotations": [{"image_id", "caption"}]}
  ``xvlm_region``  X-VLM region JSON (a list, or JSONL): {"image", "caption"?: str | [str],
                   "elems": [{"bb": [x, y, w, h] pixels, "caption": str, "attributes"?: [str]}]};
                   an element's phrase is its attributes then its caption ("red car").
  ``text``         text files (``path`` may be a glob): one example per non-blank line.
  ``video_frames`` JSONL {"frames": folder of image files (sorted by name), "caption": ...}.

Relative image paths resolve against ``image_root`` (default: the annotation file's folder).
Nothing a record holds can crash the build: unusable records and parts of records are dropped
and counted per reason in ``info.metadata['bad']`` (the pipeline's ``bad_counts()`` starts from
them), the first few logged with file and line; converted images (grey, CMYK, alpha, palette)
are kept and counted as ``converted_<kind>``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import glob
import json
import math
import os

import numpy as np
import tensorflow_datasets as tfds

from xfm_jax.data.builders import schema

FORMATS = {'jsonl': 'image_text', 'coco': 'image_text', 'xvlm_region': 'image_text',
           'text': 'text', 'video_frames': 'video'}
_IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')


@dataclasses.dataclass
class UserConfig(tfds.core.BuilderConfig):
    format: str = 'jsonl'
    path: str = ''  # annotation file (text: file or glob) for the train split
    validation_path: str = ''  # optional validation split, same format
    image_root: str = ''
    max_caption_chars: int = 1000  # longer captions are dropped as 'long_text' (scraped junk)
    max_frames: int = 16  # video: frames kept per clip, evenly spaced


class XfmUser(tfds.core.GeneratorBasedBuilder):
    """User data from JSONL / COCO / X-VLM JSON / text files / frame folders."""

    VERSION = tfds.core.Version('1.0.0')

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        if config.format not in FORMATS:
            raise ValueError(f'xfm_user/{config.name}: format {config.format!r} is not one of '
                             f'{sorted(FORMATS)}.')
        features = {'image_text': schema.image_text_features, 'text': schema.text_features,
                    'video': schema.video_features}[FORMATS[config.format]]()
        return self.dataset_info_from_configs(features=features,
                                              metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        del dl_manager  # local files only
        config = self.builder_config
        paths = {'train': config.path, 'validation': config.validation_path}
        return {split: self._generate_examples(path, split) for split, path in paths.items()
                if path}

    def _generate_examples(self, path: str, split: str):
        config = self.builder_config
        log = schema.drop_log(self, split)
        reader = Reader(config, log, config.image_root or os.path.dirname(path))
        for name, line, record in _records(config.format, path, log):
            where = f'{name}:{line}'
            try:
                example = getattr(reader, config.format)(record, where)
            except schema.BadRecord as bad:
                log.add(bad.reason, where, str(bad))
                continue
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                log.add('malformed_record', where, f'{type(error).__name__}: {error}')
                continue
            yield where, example


def _records(format_: str, path: str, log: schema.DropLog):
    """(file name, line or index, record) triples; bad JSON lines are counted, not raised."""
    if format_ == 'text':
        paths = sorted(glob.glob(path))
        if not paths:
            raise FileNotFoundError(f'No text files match {path!r} (xfm_user text path).')
        for name in paths:
            with open(name, encoding='utf-8', errors='strict') as f:
                try:
                    lines = f.read().splitlines()
                except UnicodeDecodeError as error:
                    log.add('undecodable_text', name, str(error))
                    continue
            for number, text in enumerate(lines, 1):
                if text.strip():
                    yield name, number, text
        return
    schema.require(path, 'a file at this path (data.user_sources.<name>.path)',
                   f'{format_} annotation file')
    with open(path, encoding='utf-8') as f:
        content = f.read()
    if format_ == 'coco':
        data = json.loads(content)
        files = {image['id']: image['file_name'] for image in data['images']}
        captions: dict = {}
        for annotation in data['annotations']:
            captions.setdefault(annotation['image_id'], []).append(annotation['caption'])
        for image_id, file_name in files.items():
            yield path, image_id, {'image': file_name, 'caption': captions.get(image_id, [])}
        return
    if format_ == 'xvlm_region' and content.lstrip().startswith('['):
        for index, record in enumerate(json.loads(content)):
            yield path, index, record
        return
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield path, number, json.loads(line)
        except json.JSONDecodeError as error:
            log.add('malformed_record', f'{path}:{number}', str(error))


@dataclasses.dataclass
class Reader:
    """One method per format: record -> example of the format's schema (or BadRecord)."""
    config: UserConfig
    log: schema.DropLog
    image_root: str

    def _image(self, value, where: str):
        """An existing (or image-named) path under image_root, a data URI or raw base64."""
        if not isinstance(value, str) or not value:
            raise schema.BadRecord('malformed_record',
                                   f'"image" must be a path or base64, got {value!r}')
        path = os.path.join(self.image_root, value)
        if not value.startswith('data:') and (
                os.path.exists(path) or os.path.splitext(value)[1].lower() in _IMAGE_SUFFIXES):
            return schema.load_image(path, self.log, where)
        try:
            data = base64.b64decode(value.partition(',')[2] if value.startswith('data:')
                                    else value, validate=True)
        except (binascii.Error, ValueError) as error:
            raise schema.BadRecord('missing_file', f'{path} does not exist and the value is not '
                                   'base64') from error
        return schema.load_image(data, self.log, where)

    def _captions(self, value, where: str) -> list[str]:
        """Usable captions of a str | [str] | None value; empty and over-long ones counted."""
        captions = [value] if isinstance(value, str) else list(value or [])
        kept = []
        for caption in captions:
            if not isinstance(caption, str) or not caption.strip():
                self.log.add('empty_text', where, f'caption {caption!r}')
            elif len(caption) > self.config.max_caption_chars:
                self.log.add('long_text', where, f'{len(caption)} characters')
            else:
                kept.append(caption.strip())
        return kept

    def _example(self, image, key: str, captions: list[str], boxes=(), phrases=()) -> dict:
        return {'image': schema.jpeg_bytes(image), 'image_key': key, 'captions': captions,
                'objects': {'bbox': np.array(boxes, np.float32).reshape(-1, 4),
                            'phrase': list(phrases)}}

    def jsonl(self, record: dict, where: str) -> dict:
        captions = self._captions(record['caption'], where)
        if not captions:
            raise schema.BadRecord('no_text', 'no usable caption')
        return self._example(self._image(record['image'], where), where, captions)

    coco = jsonl

    def xvlm_region(self, record: dict, where: str) -> dict:
        image = self._image(record['image'], where)
        boxes, phrases = [], []
        for i, elem in enumerate(record['elems']):
            phrase = ' '.join([*elem.get('attributes', []), elem.get('caption', '')]).strip()
            box = clip_box(elem['bb'], image.width, image.height)
            if box is None:
                self.log.add('bad_box', f'{where} elem {i}', f'bb {elem["bb"]} in '
                             f'{image.width}x{image.height}')
            elif self._captions(phrase, f'{where} elem {i}'):
                boxes.append(box)
                phrases.append(phrase)
        captions = self._captions(record.get('caption'), where) if record.get('caption') else []
        if not boxes and not captions:
            raise schema.BadRecord('no_boxes', 'no usable box or caption')
        return self._example(image, where, captions, boxes, phrases)

    def text(self, record: str, where: str) -> dict:
        return {'text': record.strip()}

    def video_frames(self, record: dict, where: str) -> dict:
        captions = self._captions(record['caption'], where)
        if not captions:
            raise schema.BadRecord('no_text', 'no usable caption')
        folder = os.path.join(self.image_root, record['frames'])
        names = sorted(n for n in (os.listdir(folder) if os.path.isdir(folder) else [])
                       if os.path.splitext(n)[1].lower() in _IMAGE_SUFFIXES)
        frames = []
        for name in names:
            try:
                frames.append(schema.load_image(os.path.join(folder, name), self.log, where))
            except schema.BadRecord as bad:
                self.log.add(f'{bad.reason}_frame', os.path.join(folder, name), str(bad))
        if not frames:
            raise schema.BadRecord('missing_file', f'no decodable frames in {folder}')
        picks = np.linspace(0, len(frames) - 1, min(len(frames), self.config.max_frames))
        return {'frames': [schema.jpeg_bytes(frames[round(i)]) for i in picks],
                'video_key': where, 'captions': captions}


def clip_box(bb, width: int, height: int):
    """[x, y, w, h] clipped to the image, or None when malformed, non-finite or of zero area
    inside the image."""
    if not isinstance(bb, (list, tuple)) or len(bb) != 4:
        return None
    try:
        x, y, w, h = (float(v) for v in bb)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        return None
    return [x0, y0, x1 - x0, y1 - y0]
