"""``xfm_user``: the user's own data from files, one builder config per data set (schemas in
docs/data.md). Formats (JSON "list" formats also read JSONL, one record per line):

  ``jsonl``        image-text pairs: one JSON object per line,
                   {"image": path | base64 | "data:...;base64,...", "caption": str | [str, ...]}
  ``coco``         COCO captions JSON: {"images": [{"id", "file_name"}],
                   "annotations": [{"image_id", "caption"}]}
  ``karpathy``     COCO / Flickr30k Karpathy-split retrieval JSON (ALBEF, X-VLM): a list of
                   {"image", "caption": str | [str], "image_id"?}; records of one image (the
                   training files repeat it, one caption each) become one example.
  ``xvlm_region``  X-VLM region JSON: {"image", "caption"?: str | [str],
                   "elems": [{"bb": [x, y, w, h] pixels, "caption": str, "attributes"?: [str]}]};
                   an element's phrase is its attributes then its caption ("red car").
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

Relative image paths resolve against ``image_root`` (default: the annotation file's folder).
Nothing a record holds can crash the build: unusable records and parts of records are dropped
and counted per reason in ``info.metadata['bad']`` (the pipeline's ``bad_counts()`` starts from
them), the first few logged with file and line; converted images (grey, CMYK, alpha, palette)
are kept and counted as ``converted_<kind>``. A missing or malformed *file* (not JSON, a
missing top-level key) is an error naming the file and the config key that points at it.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import glob
import json
import math
import os

import numpy as np
import tensorflow_datasets as tfds

from xfm_jax.data.builders import schema

FORMATS = {'jsonl': 'image_text', 'coco': 'image_text', 'karpathy': 'image_text',
           'xvlm_region': 'image_text', 'refcoco': 'image_text', 'vqa_v2': 'image_text',
           'image_folder': 'image_text', 'nlvr2': 'image_pair', 'text': 'text',
           'video_frames': 'video'}
REGION_FORMATS = ('xvlm_region', 'refcoco')  # boxed phrases: feed the region stream
QA_FORMATS = ('vqa_v2',)  # question-answer pairs: the vqa_image_text stream, VQA fine-tuning
_IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')


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


def vqa_features() -> tfds.features.FeaturesDict:
    """image_text with ``qa``: per question its text, the majority answer (``answer``, as the
    other QA sources store it), all human ``answers`` (VQA's soft score) and ``question_id``."""
    return schema.image_text_features(qa=tfds.features.Sequence({
        'question': tfds.features.Text(), 'answer': tfds.features.Text(),
        'answers': tfds.features.Sequence(tfds.features.Text()),
        'question_id': tfds.features.Scalar(np.int64)}))


def class_names(config: UserConfig) -> list[str]:
    """image_folder: the sorted class folders under the train ``path``."""
    if not os.path.isdir(config.path):
        raise FileNotFoundError(f'xfm_user/{config.name}: image_folder root {config.path!r} '
                                f'(data.user_sources.{config.name}.path) is not a folder.')
    names = sorted(n for n in os.listdir(config.path)
                   if os.path.isdir(os.path.join(config.path, n)) and not n.startswith('.'))
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

    def _split_generators(self, dl_manager):
        del dl_manager  # local files only
        config = self.builder_config
        if not config.path:
            raise ValueError(f'xfm_user/{config.name}: data.user_sources.{config.name}.path is '
                             'empty; set it to the training file (or folder).')
        paths = {'train': config.path, 'validation': config.validation_path}
        return {split: self._generate_examples(path, split) for split, path in paths.items()
                if path}

    def _generate_examples(self, path: str, split: str):
        config = self.builder_config
        log = schema.drop_log(self, split)
        root = config.image_root or (path if os.path.isdir(path) else os.path.dirname(path))
        reader = Reader(config, log, root)
        for name, line, record in _records(config, path, split, log):
            where = f'{name}:{line}'
            try:
                example = getattr(reader, config.format)(record, where)
            except schema.BadRecord as bad:
                log.add(bad.reason, where, str(bad))
                continue
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
                log.add('malformed_record', where, f'{type(error).__name__}: {error}')
                continue
            yield where, example


# --- Files -> records ---------------------------------------------------------------------------

def _load_json(path: str, key: str, what: str):
    """A whole JSON file; FileNotFoundError / ValueError naming the file and its config key."""
    schema.require(path, f'a file at this path (data.user_sources.<name>.{key})', what)
    with open(path, encoding='utf-8') as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f'{what} {path} (data.user_sources.<name>.{key}) is not valid '
                             f'JSON: {error}') from error


def _field(data, key: str, path: str, what: str):
    """``data[key]``, a list; ValueError naming the file when it is not there."""
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f'{what} {path} has no list {key!r} at its top level.')
    return data[key]


def _json_records(path: str, what: str, log: schema.DropLog):
    """(index, record) of a JSON list (index from 0) or JSONL (line number from 1; a bad line is
    counted, not raised)."""
    schema.require(path, 'a file at this path (data.user_sources.<name>.path)', what)
    with open(path, encoding='utf-8') as f:
        content = f.read()
    if content.lstrip().startswith('['):
        try:
            records = json.loads(content)
        except json.JSONDecodeError as error:
            raise ValueError(f'{what} {path} starts with "[" but is not a valid JSON list: '
                             f'{error}') from error
        yield from enumerate(records)
        return
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            log.add('malformed_record', f'{path}:{number}', str(error))


def _by_image(path: str, records, log: schema.DropLog):
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
    """(file name, line or index, record) triples for ``Reader.<format>``. Records a file's
    structure cannot place are counted; a missing or unreadable file raises."""
    format_ = config.format
    what = f'{format_} file'
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
    if format_ == 'image_folder':
        yield from _folder_records(path, class_names(config), log)
        return
    if format_ == 'coco':
        data = _load_json(path, 'path', what)
        files = {image['id']: image['file_name'] for image in _field(data, 'images', path, what)}
        captions: dict = {}
        for annotation in _field(data, 'annotations', path, what):
            captions.setdefault(annotation['image_id'], []).append(annotation['caption'])
        for image_id, file_name in files.items():
            yield path, image_id, {'image': file_name, 'caption': captions.get(image_id, [])}
        return
    if format_ == 'vqa_v2':
        annotations = (config.annotations_path if split == 'train'
                       else config.validation_annotations_path)
        yield from _vqa_records(config, path, annotations, log)
        return
    records = _json_records(path, what, log)
    if format_ in ('karpathy', 'refcoco'):
        for index, image, group in _by_image(path, records, log):
            yield path, index, {'image': image, 'records': group}
        return
    for index, record in records:
        yield path, index, record


def _folder_records(root: str, names: list[str], log: schema.DropLog):
    """ROOT/<class>/<file> -> (class folder, file name, {'image': path, 'label': class}); files
    outside a known class folder and files without an image suffix are counted."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f'image_folder root {root} (data.user_sources.<name>.'
                                'validation_path) is not a folder.')
    for entry in sorted(os.listdir(root)):
        folder = os.path.join(root, entry)
        if entry.startswith('.'):
            continue
        if not os.path.isdir(folder):
            log.add('no_class', folder, 'a file outside any class folder')
            continue
        if entry not in names:
            log.add('unknown_class', folder, f'not among the train classes {names[:5]}...')
            continue
        for name in sorted(os.listdir(folder)):
            if name.startswith('.'):
                continue
            if os.path.splitext(name)[1].lower() not in _IMAGE_SUFFIXES:
                log.add('not_an_image', os.path.join(folder, name))
                continue
            yield folder, name, {'image': os.path.join(folder, name), 'label': entry}


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
            if isinstance(annotation, dict) and 'question_id' in annotation:
                answers[annotation['question_id']] = annotation
            else:
                log.add('malformed_record', f'{annotations_path}:{index}',
                        f'annotation without question_id: {annotation!r:.80}')
    per_image: dict = {}
    for index, question in enumerate(questions):
        if not isinstance(question, dict) or 'image_id' not in question:
            log.add('malformed_record', f'{path}:{index}',
                    f'question without image_id: {question!r:.80}')
            continue
        annotation = answers.get(question.get('question_id')) if answers else None
        per_image.setdefault(question['image_id'], []).append((question, annotation))
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
        if value is None:
            captions = []
        elif isinstance(value, (list, tuple)):
            captions = list(value)
        else:
            captions = [value]
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

    def karpathy(self, record: dict, where: str) -> dict:
        """All captions of one image, in file order; image_key: the image path."""
        captions = []
        for part in record['records']:
            captions += self._captions(part.get('caption'), where)
        if not captions:
            raise schema.BadRecord('no_text', 'no usable caption')
        return self._example(self._image(record['image'], where), record['image'], captions)

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

    def refcoco(self, record: dict, where: str) -> dict:
        """Every expression of every reference to one image -> (phrase, its reference's box)."""
        image = self._image(record['image'], where)
        boxes, phrases = [], []
        for ref in record['records']:
            at = f'{where} ref {ref.get("ref_id", "?")}'
            box = clip_box(ref.get('bbox'), image.width, image.height)
            if box is None:
                self.log.add('bad_box', at, f'bbox {ref.get("bbox")!r} in '
                             f'{image.width}x{image.height}')
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
                self.log.add(bad.reason, at, str(bad))
                continue
            except (KeyError, TypeError, ValueError) as error:
                self.log.add('malformed_record', at, f'{type(error).__name__}: {error}')
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
            found = next((c for c in candidates
                          if os.path.exists(os.path.join(self.image_root, c))), candidates[0])
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
