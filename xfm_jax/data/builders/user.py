"""``xfm_user``: the user's own data from files, one builder config per data set (schemas in
docs/data.md). Formats (JSON "list" formats also read JSONL, one record per line):

  ``jsonl``        image-text pairs: one JSON object per line,
                   {"image": path | base64 | "data:...;base64,...", "caption": str | [str, ...]}
                   (field names: ``image_field``, ``caption_field``; ``preset='xvlm'`` reads
                   the X-VLM / X²-VLM pre-training shards: {"binary": base64, "desc": ...})
  ``coco``         COCO captions JSON: {"images": [{"id", "file_name"}],
                   "annotations": [{"image_id", "caption"}]}
  ``karpathy``     COCO / Flickr30k Karpathy-split retrieval JSON (ALBEF, X-VLM): a list of
                   {"image", "caption": str | [str], "image_id"?}; records of one image (the
                   training files repeat it, one caption each) become one example.
  ``xvlm_region``  X-VLM region JSON: {"image", "caption"?: str | [str],
                   "elems": [{"bb": [x, y, w, h] pixels, "caption": str, "attributes"?: [str]}]};
                   an element's phrase is its attributes then its caption ("red car"); the
                   released files (``preset='xvlm'``) hold the image as base64 in "binary".
  ``refcoco``      RefCOCO / RefCOCO+ / RefCOCOg referring expressions: a list of {"image",
                   "text": str | "sentences": [str], "bbox": [x, y, w, h] pixels, "ref_id"?}; the
                   expressions of one image become its boxed phrases (``objects``).
  ``vqa_v2``       the official VQA v2 questions JSON {"data_subtype"?, "questions": [{"image_id",
                   "question", "question_id"}]} (``path``) and, optionally (test splits have none),
                   annotations JSON {"annotations": [{"question_id", "multiple_choice_answer",
                   "answers": [{"answer"}, ...]}]} (``annotations_path``); images found by
                   ``image_pattern``. One example per image with its questions in ``qa``.
  ``image_folder`` ROOT/<class>/<image file>: ``label`` (names: the sorted class folders of the
                   train ``path``) and the class name as caption.
  ``nlvr2``        NLVR2 JSON(L): {"identifier", "sentence", "label": "True" | "False",
                   "images"?: [left, right]}; without "images", the official release's
                   {identifier minus its last -N}-img0.png / -img1.png (:func:`nlvr2_images`).
  ``text``         text files (``path`` may be a glob): one example per non-blank line.
  ``video_frames`` JSONL {"frames": folder of image files (sorted by name), "caption": ...}.

Line formats (``jsonl``, ``karpathy``, ``xvlm_region``, ``refcoco``, ``nlvr2``, ``text``,
``video_frames``) take in ``path`` (and ``validation_path``) comma-separated files, globs and
folders (every file in it: the reference's shard folders), local or ``gs://``, and read them
line by line (a file that is one JSON list is read whole); records of one image are grouped
within a file. Relative image paths resolve against ``image_root`` (default: each annotation
file's folder). Images are stored at most ``max_image_side`` pixels on their longer side
(aspect kept; boxes scaled with them); sources over ``max_image_pixels`` are refused unread.

Nothing a record holds can crash the build, and a bad record never costs a good one: each
unusable record is dropped and counted once, by reason, in ``info.metadata['bad']`` (the
pipeline's ``bad_counts()`` starts from them), the first few logged with file and line; unusable
parts of kept records (a caption, a box, a question, a frame) are counted in
``metadata['dropped_parts']``, converted images (grey, CMYK, alpha, palette, 16-bit, float) in
``metadata['converted']``. Each split logs "accepted N of M records" with those counts. A
missing or malformed *file* (not JSON, a missing top-level key) is an error naming the file and
the config key that points at it.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import json
import logging
import math
import os

import numpy as np
import tensorflow_datasets as tfds

from xfm_jax import paths
from xfm_jax.data.builders import schema

FORMATS = {'jsonl': 'image_text', 'coco': 'image_text', 'karpathy': 'image_text',
           'xvlm_region': 'image_text', 'refcoco': 'image_text', 'vqa_v2': 'image_text',
           'image_folder': 'image_text', 'nlvr2': 'image_pair', 'text': 'text',
           'video_frames': 'video'}
# Formats whose ``path`` names files of records read line by line (globs, shard folders).
LINE_FORMATS = ('jsonl', 'karpathy', 'xvlm_region', 'refcoco', 'nlvr2', 'text', 'video_frames')
REGION_FORMATS = ('xvlm_region', 'refcoco')  # boxed phrases: feed the region stream
QA_FORMATS = ('vqa_v2',)  # question-answer pairs: the vqa_image_text stream, VQA fine-tuning
_IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')
# Field names of the reference repositories' own pre-training files (X-VLM / X²-VLM configs:
# images: {image_key: "binary", caption_key: "desc"}; regions: {image_key: "binary"}).
PRESETS = {'': {}, 'xvlm': {'jsonl': dict(image_field='binary', caption_field='desc'),
                            'xvlm_region': dict(image_field='binary')}}


@dataclasses.dataclass
class UserConfig(tfds.core.BuilderConfig):
    format: str = 'jsonl'
    path: str = ''  # annotation file (text: file or glob; image_folder: root) of the train split
    validation_path: str = ''  # optional validation split, same format
    image_root: str = ''
    max_caption_chars: int = 1000  # longer captions are dropped as 'long_text' (scraped junk)
    max_frames: int = 16  # video: frames kept per clip, evenly spaced
    # vqa_v2: the annotations of each split ('' for test questions: no answers), and the image
    # file of a question under image_root ({subtype}: the questions file's "data_subtype").
    annotations_path: str = ''
    validation_annotations_path: str = ''
    image_pattern: str = '{subtype}/COCO_{subtype}_{image_id:012d}.jpg'
    # jsonl / xvlm_region: the record's image and caption fields ('' = the preset's, else
    # "image" and "caption"); preset: '' or 'xvlm' (the reference pre-training files).
    preset: str = ''
    image_field: str = ''
    caption_field: str = ''
    max_image_side: int = 512  # stored images: longer side at most this (0: as they are)
    max_image_pixels: int = schema.MAX_IMAGE_PIXELS  # larger sources are refused, counted


def field_names(config: UserConfig) -> tuple[str, str]:
    """(image field, caption field) of a jsonl / xvlm_region record."""
    if config.preset not in PRESETS:
        raise ValueError(f'data.user_sources.{config.name}.preset {config.preset!r} is not one '
                         f'of {sorted(PRESETS)}.')
    preset = PRESETS[config.preset].get(config.format, {})
    return (config.image_field or preset.get('image_field', 'image'),
            config.caption_field or preset.get('caption_field', 'caption'))


def vqa_features() -> tfds.features.FeaturesDict:
    """image_text with ``qa``: per question its text, the majority answer (``answer``, as the
    other QA sources store it), all human ``answers`` (VQA's soft score) and ``question_id``."""
    return schema.image_text_features(qa=tfds.features.Sequence({
        'question': tfds.features.Text(), 'answer': tfds.features.Text(),
        'answers': tfds.features.Sequence(tfds.features.Text()),
        'question_id': tfds.features.Scalar(np.int64)}))


def class_names(config: UserConfig) -> list[str]:
    """image_folder: the sorted class folders under the train ``path``."""
    root = paths.resolve(config.path)
    if not root.is_dir():
        raise FileNotFoundError(f'xfm_user/{config.name}: image_folder root {config.path!r} '
                                f'(data.user_sources.{config.name}.path) is not a folder.')
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith('.'))
    if not names:
        raise ValueError(f'xfm_user/{config.name}: {config.path} has no class folders '
                         '(ROOT/<class name>/<image files>).')
    return names


class XfmUser(tfds.core.GeneratorBasedBuilder):
    """User data from JSON(L) / COCO / VQA / NLVR2 files, image folders, text files, frames."""

    VERSION = tfds.core.Version('1.0.0')

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        if config.format not in FORMATS:
            raise ValueError(f'xfm_user/{config.name}: format {config.format!r} is not one of '
                             f'{sorted(FORMATS)}.')
        if config.format == 'vqa_v2':
            features = vqa_features()
        elif config.format == 'image_folder':
            features = schema.image_text_features(
                label=tfds.features.ClassLabel(names=class_names(config)))
        else:
            features = {'image_text': schema.image_text_features,
                        'image_pair': schema.image_pair_features,
                        'text': schema.text_features,
                        'video': schema.video_features}[FORMATS[config.format]]()
        return self.dataset_info_from_configs(features=features,
                                              metadata=tfds.core.MetadataDict())

    def _download_and_prepare(self, dl_manager, download_config):
        # A build given a Beam runner or options (xfm_jax.data.build --beam_runner) runs as a
        # Beam pipeline: the source's files are shared out to the workers.
        self._beam = bool(download_config.beam_runner or download_config.beam_options)
        return super()._download_and_prepare(dl_manager, download_config)

    def _split_generators(self, dl_manager):
        del dl_manager  # local files only
        config = self.builder_config
        if not config.path:
            raise ValueError(f'xfm_user/{config.name}: data.user_sources.{config.name}.path is '
                             'empty; set it to the training file (or folder).')
        paths_ = {'train': config.path, 'validation': config.validation_path}
        make = self._beam_examples if getattr(self, '_beam', False) else self._generate_examples
        return {split: make(path, split) for split, path in paths_.items() if path}

    def _generate_examples(self, path: str, split: str):
        field_names(self.builder_config)  # an unknown preset fails before any file is read
        log = schema.drop_log(self, split)
        yield from _examples(self.builder_config, _records(self.builder_config, path, split, log),
                             log)
        schema.finish(self, split, log)

    def _beam_examples(self, path: str, split: str):
        """The split as a Beam transform: one work unit per source file (line formats: each
        worker reads its files line by line), else one per record of the annotation file read
        here. Workers count drops in Beam counters; ``_process_pipeline_result`` stores them as
        the in-process build does, so both builds write the same records and metadata."""
        beam = tfds.core.lazy_imports.apache_beam
        config = self.builder_config
        field_names(config)  # an unknown preset fails here, not in every worker
        log = schema.drop_log(self, split)  # what listing the units drops; workers add theirs
        if config.format in LINE_FORMATS:
            units = [(os.fspath(f),) for f in source_files(path, f'{config.format} file')]
        else:
            units = [(root, str(name), line, record)
                     for root, name, line, record in _records(config, path, split, log)]
        return (f'{split}_units' >> beam.Create(units) | f'{split}_spread' >> beam.Reshuffle()
                | f'{split}_examples' >> beam.FlatMap(_unit_examples, config, split))

    def _process_pipeline_result(self, pipeline_result) -> None:
        beam = tfds.core.lazy_imports.apache_beam
        query = pipeline_result.metrics().query(
            beam.metrics.MetricsFilter().with_namespace(_beam_namespace(self.builder_config)))
        metadata = self.info.metadata
        accepted = metadata.setdefault('accepted', {})
        for counter in query['counters']:
            split, key, reason = counter.key.metric.name.split('/', 2)
            if key == 'accepted':
                accepted[split] = accepted.get(split, 0) + counter.committed
            else:
                metadata.setdefault(key, {}).setdefault(split, collections.Counter())[reason] += (
                    counter.committed)
        for split in metadata.get('bad', {}):  # every split built (drop_log registered it)
            accepted.setdefault(split, 0)
            log = schema.DropLog.from_accounting(f'{self.name}/{self.builder_config.name}/{split}',
                                                 schema.accounting(metadata, split))
            logging.info('data build %s', log.summary())


def _examples(config: UserConfig, records, log: schema.DropLog):
    """(key, example) of the records Reader.<format> accepts; the others are counted in log."""
    for root, name, line, record in records:
        where = f'{name}:{line}'
        try:
            example = getattr(Reader(config, log, config.image_root or root),
                              config.format)(record, where)
        except schema.BadRecord as bad:
            log.add(bad.reason, where, str(bad))
            continue
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
            log.add('malformed_record', where, f'{type(error).__name__}: {error}')
            continue
        log.accepted += 1
        yield where, example


def _beam_namespace(config: UserConfig) -> str:
    return f'xfm_user/{config.name}'


def _unit_examples(unit: tuple, config: UserConfig, split: str):
    """A Beam worker's examples of one unit (a file of a line format, or one listed record);
    its counts go to Beam counters '<split>/<bad|converted|dropped_parts|accepted>/<reason>'."""
    from apache_beam.metrics import Metrics  # pylint: disable=import-outside-toplevel
    log = schema.DropLog(f'xfm_user/{config.name}/{split}')
    if len(unit) == 1:
        file = paths.resolve(unit[0])
        records = _file_records(config, file, log)
    else:
        records = [unit]
    yield from _examples(config, records, log)
    namespace = _beam_namespace(config)
    for key, counter in (('bad', log.counts), ('converted', log.converted),
                         ('dropped_parts', log.parts)):
        for reason, n in counter.items():
            Metrics.counter(namespace, f'{split}/{key}/{reason}').inc(n)
    Metrics.counter(namespace, f'{split}/accepted/').inc(log.accepted)


# --- Files -> records ---------------------------------------------------------------------------

def _load_json(path: str, key: str, what: str):
    """A whole JSON file; FileNotFoundError / ValueError naming the file and its config key."""
    schema.require(path, f'a file at this path (data.user_sources.<name>.{key})', what)
    try:
        return json.loads(paths.resolve(path).read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f'{what} {path} (data.user_sources.<name>.{key}) is not valid '
                         f'JSON: {error}') from error


def _field(data, key: str, path: str, what: str):
    """``data[key]``, a list; ValueError naming the file when it is not there."""
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f'{what} {path} has no list {key!r} at its top level.')
    return data[key]


def source_files(spec: str, what: str) -> list:
    """The files a user path names: comma-separated files, globs and folders (every visible
    file in it, sorted), local or ``gs://``; FileNotFoundError naming what matches nothing."""
    found = []
    for part in (p.strip() for p in spec.split(',')):
        if not part:
            continue
        path = paths.resolve(part)
        if not any(c in part for c in '*?[') and path.is_dir():
            files = sorted((p for p in path.iterdir()
                            if p.is_file() and not p.name.startswith('.')), key=os.fspath)
        else:
            files = [p for p in paths.glob(part) if p.is_file()]
        if not files:
            raise FileNotFoundError(f'{what} {part!r} (data.user_sources.<name>.path) names no '
                                    'file.')
        found += files
    return found


def _lines(path, log: schema.DropLog):
    """(line number from 1, text) of the non-blank lines of a file, read one line at a time; a
    line that is not UTF-8 is counted and skipped, never the whole file."""
    with path.open('rb') as f:
        for number, raw in enumerate(f, 1):
            try:
                text = raw.decode('utf-8')
            except UnicodeDecodeError as error:
                log.add('undecodable_text', f'{path}:{number}', str(error))
                continue
            if text.strip():
                yield number, text


def _json_records(path, what: str, log: schema.DropLog):
    """(index, record) of a JSON list file (index from 0; read whole) or JSONL (line number from
    1, read line by line; a malformed or non-UTF-8 line is counted, not raised)."""
    with path.open('rb') as f:
        head = f.read(4096).lstrip()
    if head.startswith(b'['):
        try:
            records = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f'{what} {path} starts with "[" but is not a valid JSON list: '
                             f'{error}') from error
        yield from enumerate(records)
        return
    for number, line in _lines(path, log):
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            log.add('malformed_record', f'{path}:{number}', str(error))


def _by_image(path, records, log: schema.DropLog):
    """Records grouped by their "image" in first-seen order -> (first index, image, records)."""
    groups: dict = {}
    for index, record in records:
        image = record.get('image') if isinstance(record, dict) else None
        if not isinstance(image, str) or not image:
            log.add('malformed_record', f'{path}:{index}', f'no "image" path in {record!r:.80}')
            continue
        groups.setdefault(image, (index, []))[1].append(record)
    for image, (index, group) in groups.items():
        yield index, image, group


def _records(config: UserConfig, path: str, split: str, log: schema.DropLog):
    """(image root, file name, line or index, record) for ``Reader.<format>``. Records a
    file's structure cannot place are counted; a missing or unreadable file raises."""
    format_ = config.format
    what = f'{format_} file'
    if format_ == 'image_folder':
        for record in _folder_records(path, class_names(config), log):
            yield path, *record
        return
    if format_ == 'coco':
        yield from ((os.path.dirname(path), *r) for r in _coco_records(path, log))
        return
    if format_ == 'vqa_v2':
        annotations = (config.annotations_path if split == 'train'
                       else config.validation_annotations_path)
        for record in _vqa_records(config, path, annotations, log):
            yield os.path.dirname(path), *record
        return
    for file in source_files(path, what):
        yield from _file_records(config, file, log)


def _file_records(config: UserConfig, file, log: schema.DropLog):
    """(image root, file, line or index, record) of one file of a line format."""
    root = os.fspath(file.parent)
    if config.format == 'text':
        for number, text in _lines(file, log):
            yield root, file, number, text
        return
    records = _json_records(file, f'{config.format} file', log)
    if config.format in ('karpathy', 'refcoco'):
        for index, image, group in _by_image(file, records, log):
            yield root, file, index, {'image': image, 'records': group}
        return
    for index, record in records:
        yield root, file, index, record


def _coco_records(path: str, log: schema.DropLog):
    """COCO captions -> (file, image id, {'image': file name, 'caption': [captions]}). An image
    entry without an id or a file name, or whose id another entry repeats (its captions could
    belong to either), is a dropped record; an annotation without a caption or a known image
    is a dropped part."""
    what = 'coco file'
    data = _load_json(path, 'path', what)
    entries = []
    for index, image in enumerate(_field(data, 'images', path, what)):
        image_id = image.get('id') if isinstance(image, dict) else None
        name = image.get('file_name') if isinstance(image, dict) else None
        if not isinstance(image_id, (int, str)) or not isinstance(name, str) or not name:
            log.add('malformed_record', f'{path}: images[{index}]',
                    f'no "id" or "file_name" in {image!r:.80}')
        else:
            entries.append((image_id, name))
    per_id = collections.Counter(image_id for image_id, _ in entries)
    files = {}
    for image_id, name in entries:
        if per_id[image_id] > 1:
            log.add('duplicate_id', f'{path}: image id {image_id!r}',
                    f'{per_id[image_id]} images share it; their captions could be any one\'s')
        else:
            files[image_id] = name
    captions: dict = {}
    for index, annotation in enumerate(_field(data, 'annotations', path, what)):
        image_id = annotation.get('image_id') if isinstance(annotation, dict) else None
        caption = annotation.get('caption') if isinstance(annotation, dict) else None
        if isinstance(image_id, (int, str)) and per_id[image_id] > 1:
            continue  # belongs to a dropped image
        if not isinstance(image_id, (int, str)) or image_id not in files:
            log.part('no_image', f'{path}: annotations[{index}]', f'{annotation!r:.80}')
        elif caption is None:
            log.part('empty_text', f'{path}: annotations[{index}]', 'no "caption"')
        else:
            captions.setdefault(image_id, []).append(caption)
    for image_id, file_name in files.items():
        yield path, image_id, {'image': file_name, 'caption': captions.get(image_id, [])}


def _folder_records(root: str, names: list[str], log: schema.DropLog):
    """ROOT/<class>/<file> -> (class folder, file name, {'image': path, 'label': class}); files
    outside a known class folder and files without an image suffix are counted."""
    root_path = paths.resolve(root)
    if not root_path.is_dir():
        raise FileNotFoundError(f'image_folder root {root} (data.user_sources.<name>.'
                                'validation_path) is not a folder.')
    for folder in sorted(root_path.iterdir(), key=os.fspath):
        entry = folder.name
        if entry.startswith('.'):
            continue
        if not folder.is_dir():
            log.add('no_class', os.fspath(folder), 'a file outside any class folder')
            continue
        if entry not in names:
            log.add('unknown_class', os.fspath(folder), f'not among the train classes '
                    f'{names[:5]}...')
            continue
        for file in sorted(folder.iterdir(), key=os.fspath):
            if file.name.startswith('.'):
                continue
            if file.suffix.lower() not in _IMAGE_SUFFIXES:
                log.add('not_an_image', os.fspath(file))
                continue
            yield os.fspath(folder), file.name, {'image': f'{entry}/{file.name}', 'label': entry}


def _vqa_records(config: UserConfig, path: str, annotations_path: str, log: schema.DropLog):
    """One record per image: {'image': its file (``image_pattern``), 'questions': [(question,
    annotation | None)], 'annotated': whether the split has answers}."""
    what = 'vqa_v2 questions file'
    data = _load_json(path, 'path', what)
    questions = _field(data, 'questions', path, what)
    subtype = data.get('data_subtype')
    try:
        config.image_pattern.format(subtype=subtype or '', image_id=0)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f'data.user_sources.{config.name}.image_pattern '
                         f'{config.image_pattern!r} is not a format string over {{subtype}} '
                         f'and {{image_id}}: {error!r}') from error
    if '{subtype' in config.image_pattern and not isinstance(subtype, str):
        raise ValueError(f'{what} {path} has no "data_subtype" for image_pattern '
                         f'{config.image_pattern!r}; set data.user_sources.{config.name}.'
                         'image_pattern (e.g. "COCO_val2014_{image_id:012d}.jpg").')
    answers = {}
    if annotations_path:
        key = 'annotations_path' if annotations_path == config.annotations_path else \
            'validation_annotations_path'
        annotations = _field(_load_json(annotations_path, key, 'vqa_v2 annotations file'),
                             'annotations', annotations_path, 'vqa_v2 annotations file')
        for index, annotation in enumerate(annotations):
            question_id = annotation.get('question_id') if isinstance(annotation, dict) else None
            if isinstance(question_id, (int, str)):
                answers[question_id] = annotation
            else:  # its question is then counted as 'no_answer'
                log.part('malformed_record', f'{annotations_path}:{index}',
                         f'annotation without a question_id: {annotation!r:.80}')
    per_image: dict = {}
    for index, question in enumerate(questions):
        image_id = question.get('image_id') if isinstance(question, dict) else None
        if not isinstance(image_id, (int, str)):  # a list or a dict names no one image
            log.part('malformed_record', f'{path}:{index}',
                     f'question without an image_id: {question!r:.80}')
            continue
        question_id = question.get('question_id')
        annotation = (answers.get(question_id) if isinstance(question_id, (int, str))
                      else None)
        per_image.setdefault(image_id, []).append((question, annotation))
    for image_id, group in per_image.items():
        try:
            image = config.image_pattern.format(subtype=subtype, image_id=image_id)
        except (ValueError, TypeError) as error:
            log.add('malformed_record', f'{path}: image_id {image_id!r}', str(error))
            continue
        yield path, f'image {image_id}', {'image': image, 'questions': group,
                                          'annotated': bool(annotations_path)}


def nlvr2_images(record: dict) -> list[str]:
    """Candidate relative paths of the left and right image, best first: ``record['images']``
    when given (X-VLM / ALBEF files), else the official release's names for identifier
    'train-10171-0-0' (split, set, pair, sentence): 'train-10171-0-img0.png' / '-img1.png',
    directly under image_root, under its "directory" field (the training images' numbered
    folders), under the split ('train/'), or under both."""
    if 'images' in record:
        images = record['images']
        if not isinstance(images, (list, tuple)) or len(images) != 2:
            raise schema.BadRecord('malformed_record', f'"images" must be [left, right], got '
                                   f'{images!r:.80}')
        return [[images[0]], [images[1]]]
    identifier = record['identifier']
    prefix, split = identifier.rsplit('-', 1)[0], identifier.split('-', 1)[0]
    folders = ['', split]
    if 'directory' in record:
        folders += [str(record['directory']), os.path.join(split, str(record['directory']))]
    return [[os.path.join(folder, f'{prefix}-img{side}.png') for folder in folders]
            for side in (0, 1)]


# --- Records -> examples ------------------------------------------------------------------------

@dataclasses.dataclass
class Reader:
    """One method per format: record -> example of the format's schema (or BadRecord)."""
    config: UserConfig
    log: schema.DropLog
    image_root: str

    def _image(self, value, where: str):
        """An image-named or existing path under image_root (local or gs://), a data URI or raw
        base64; at most ``max_image_side`` on its longer side."""
        if not isinstance(value, str) or not value:
            raise schema.BadRecord('malformed_record',
                                   f'"image" must be a path or base64, got {value!r:.80}')
        limits = dict(max_side=self.config.max_image_side,
                      max_pixels=self.config.max_image_pixels)
        if not value.startswith('data:'):
            path = _join(self.image_root, value)
            # Suffix first: a base64 string is never looked up as a (remote) file name.
            if os.path.splitext(value)[1].lower() in _IMAGE_SUFFIXES or (
                    len(value) < 1024 and path.exists()):
                return schema.load_image(path, self.log, where, **limits)
        try:
            data = base64.b64decode(value.partition(',')[2] if value.startswith('data:')
                                    else value, validate=True)
        except (binascii.Error, ValueError) as error:
            raise schema.BadRecord('missing_file', f'{value[:80]!r} is neither a file under '
                                   f'{self.image_root} nor base64') from error
        return schema.load_image(data, self.log, where, **limits)

    def _captions(self, value, where: str) -> list[str]:
        """Usable captions of a str | [str] | {language: str} | None value; empty and over-long
        ones counted as dropped parts."""
        if value is None:
            captions = []
        elif isinstance(value, (list, tuple)):
            captions = list(value)
        elif isinstance(value, dict):  # the reference's multilingual captions
            captions = list(value.values())
        else:
            captions = [value]
        kept = []
        for caption in captions:
            if not isinstance(caption, str) or not caption.strip():
                self.log.part('empty_text', where, f'caption {caption!r:.80}')
            elif len(caption) > self.config.max_caption_chars:
                self.log.part('long_text', where, f'{len(caption)} characters')
            else:
                kept.append(caption.strip())
        return kept

    def _example(self, image, key: str, captions: list[str], boxes=(), phrases=()) -> dict:
        return {'image': schema.jpeg_bytes(image), 'image_key': key, 'captions': captions,
                'objects': {'bbox': np.array(boxes, np.float32).reshape(-1, 4),
                            'phrase': list(phrases)}}

    def _box(self, bb, image, where: str):
        """A box in source pixels -> clipped and scaled to the stored image, or None (counted)."""
        width, height = image.info['original_size']
        box = clip_box(bb, width, height)
        if box is None:
            self.log.part('bad_box', where, f'box {bb!r:.80} in {width}x{height}')
            return None
        return [v * image.width / width if i % 2 == 0 else v * image.height / height
                for i, v in enumerate(box)]

    def jsonl(self, record: dict, where: str) -> dict:
        image_field, caption_field = field_names(self.config)
        captions = self._captions(record[caption_field], where)
        if not captions:
            raise schema.BadRecord('no_text', 'no usable caption')
        return self._example(self._image(record[image_field], where), where, captions)

    def coco(self, record: dict, where: str) -> dict:
        captions = self._captions(record['caption'], where)
        if not captions:
            raise schema.BadRecord('no_text', 'no usable caption')
        return self._example(self._image(record['image'], where), where, captions)

    def karpathy(self, record: dict, where: str) -> dict:
        """All captions of one image, in file order; image_key: the image path."""
        captions = []
        for part in record['records']:
            captions += self._captions(part.get('caption'), where)
        if not captions:
            raise schema.BadRecord('no_text', 'no usable caption')
        return self._example(self._image(record['image'], where), record['image'], captions)

    def xvlm_region(self, record: dict, where: str) -> dict:
        """An element's phrases: its attributes (a string or a list of words) before each of its
        captions (a string or a list)."""
        image_field, caption_field = field_names(self.config)
        image = self._image(record[image_field], where)
        boxes, phrases = [], []
        for i, elem in enumerate(record['elems']):
            at = f'{where} elem {i}'
            if not isinstance(elem, dict):
                self.log.part('malformed_record', at, f'{elem!r:.80}')
                continue
            attributes = elem.get('attributes') or []
            attributes = [attributes] if isinstance(attributes, str) else attributes
            if not isinstance(attributes, list) or not all(isinstance(a, str)
                                                           for a in attributes):
                self.log.part('malformed_record', at, f'attributes {attributes!r:.80}')
                continue
            box = self._box(elem.get('bb'), image, at)
            if box is None:
                continue
            for caption in self._captions(elem.get(caption_field), at):
                boxes.append(box)
                phrases.append(' '.join([*attributes, caption]).strip())
        captions = (self._captions(record[caption_field], where)
                    if record.get(caption_field) else [])
        if not boxes and not captions:
            raise schema.BadRecord('no_boxes', 'no usable box or caption')
        return self._example(image, where, captions, boxes, phrases)

    def refcoco(self, record: dict, where: str) -> dict:
        """Every expression of every reference to one image -> (phrase, its reference's box)."""
        image = self._image(record['image'], where)
        boxes, phrases = [], []
        for ref in record['records']:
            at = f'{where} ref {ref.get("ref_id", "?")}'
            box = self._box(ref.get('bbox'), image, at)
            if box is None:
                continue
            expressions = ref['sentences'] if 'sentences' in ref else ref.get('text')
            if isinstance(expressions, list):  # REFER's own refs: [{"sent": ...}, ...]
                expressions = [e.get('sent') if isinstance(e, dict) else e for e in expressions]
            for phrase in self._captions(expressions, at):
                boxes.append(box)
                phrases.append(phrase)
        if not boxes:
            raise schema.BadRecord('no_boxes', 'no reference with a usable box and expression')
        return self._example(image, record['image'], [], boxes, phrases)

    def vqa_v2(self, record: dict, where: str) -> dict:
        qa = {'question': [], 'answer': [], 'answers': [], 'question_id': []}
        for question, annotation in record['questions']:
            at = f'{where} question {question.get("question_id")}'
            try:
                text, question_id = question['question'], int(question['question_id'])
                if record['annotated'] and annotation is None:
                    raise schema.BadRecord('no_answer', 'not in the annotations file')
                answers, answer = _vqa_answers(annotation) if annotation else ([], '')
            except schema.BadRecord as bad:
                self.log.part(bad.reason, at, str(bad))
                continue
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                self.log.part('malformed_record', at, f'{type(error).__name__}: {error}')
                continue
            if not self._captions(text, at):
                continue
            qa['question'].append(text.strip())
            qa['answer'].append(answer)
            qa['answers'].append(answers)
            qa['question_id'].append(question_id)
        if not qa['question']:
            raise schema.BadRecord('no_text', 'no usable question')
        example = self._example(self._image(record['image'], where), record['image'], [])
        return {**example, 'qa': qa}

    def image_folder(self, record: dict, where: str) -> dict:
        label = record['label']
        key = f"{label}/{os.path.basename(record['image'])}"
        example = self._example(self._image(record['image'], where), key,
                                [label.replace('_', ' ')])
        return {**example, 'label': label}

    def nlvr2(self, record: dict, where: str) -> dict:
        label = record['label']
        label = {'true': 1, 'false': 0, True: 1, False: 0}.get(
            label.strip().lower() if isinstance(label, str) else label)
        if label is None:
            raise schema.BadRecord('bad_label', f'label {record["label"]!r} is not "True" or '
                                   '"False"')
        sentence = self._captions(record['sentence'], where)
        if not sentence:
            raise schema.BadRecord('no_text', 'no usable sentence')
        sides = []
        for candidates in nlvr2_images(record):
            found = next((c for c in candidates if _join(self.image_root, c).exists()),
                         candidates[0])
            sides.append((found, self._image(found, where)))
        (left_key, left), (right_key, right) = sides
        return {'left_image': schema.jpeg_bytes(left), 'right_image': schema.jpeg_bytes(right),
                'left_key': left_key, 'right_key': right_key,
                'pair_key': str(record.get('identifier', where)), 'sentence': sentence[0],
                'label': label}

    def text(self, record: str, where: str) -> dict:
        return {'text': record.strip()}

    def video_frames(self, record: dict, where: str) -> dict:
        captions = self._captions(record['caption'], where)
        if not captions:
            raise schema.BadRecord('no_text', 'no usable caption')
        folder = _join(self.image_root, record['frames'])
        files = sorted((p for p in (folder.iterdir() if folder.is_dir() else [])
                        if p.suffix.lower() in _IMAGE_SUFFIXES), key=os.fspath)
        frames = []
        for file in files:
            try:
                frames.append(schema.load_image(file, self.log, where,
                                                max_side=self.config.max_image_side,
                                                max_pixels=self.config.max_image_pixels))
            except schema.BadRecord as bad:
                self.log.part(f'{bad.reason}_frame', os.fspath(file), str(bad))
        if not frames:
            raise schema.BadRecord('missing_file', f'no decodable frames in {folder}')
        picks = np.linspace(0, len(frames) - 1, min(len(frames), self.config.max_frames))
        return {'frames': [schema.jpeg_bytes(frames[round(i)]) for i in picks],
                'video_key': where, 'captions': captions}


def _join(root: str, relative: str):
    """``relative`` under ``root`` as a path of the path layer (local or gs://); an absolute
    path or a URI stays itself."""
    if paths.is_remote(relative) or os.path.isabs(relative):
        return paths.resolve(relative)
    return paths.resolve(root) / relative


def _vqa_answers(annotation: dict) -> tuple[list[str], str]:
    """(the human answers, stripped; the majority answer: "multiple_choice_answer", else the
    commonest human answer, ties by first appearance). BadRecord('no_answer') when empty."""
    answers = [a['answer'].strip() for a in annotation.get('answers', [])
               if isinstance(a.get('answer'), str) and a['answer'].strip()]
    answer = annotation.get('multiple_choice_answer')
    answer = answer.strip() if isinstance(answer, str) else ''
    if not answer and answers:
        answer = collections.Counter(answers).most_common(1)[0][0]
    if not answer:
        raise schema.BadRecord('no_answer', 'no multiple_choice_answer and no answers')
    return answers, answer


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
