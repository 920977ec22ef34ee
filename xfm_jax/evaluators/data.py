"""Evaluation sets: a TFDS split read in order, without augmentation: texts into host numpy
arrays, images (and clips) as an :class:`ImageTable` that decodes the rows asked for from disk.

Images are resized whole (bicubic) to the model's resolution and CLIP-normalised, as the papers
evaluate; texts are cleaned and tokenised exactly as in training (``xfm_jax.data.text_ops``).
No split is ever held whole: the host keeps the texts and what one batch of images needs, so an
evaluator over every image (retrieval) keeps only their embeddings.
Any source of ``xfm_jax.data.tasks.sources`` with the image-text schema works (synthetic scenes,
Fashion-MNIST, easy-VQA, the user's own sets); :func:`load_video` reads the video schema
(synthetic clips, the user's frame folders).
"""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import tensorflow as tf

from xfm_jax import evaluators, streams
from xfm_jax.data import image_ops, tasks, text_ops, vocab as vocab_lib


class ImageTable:
    """A split's images as if float32 [N, *item_shape] (CLIP-normalised), holding none of them:
    ``table[index]`` (an int or int array, as numpy indexing) reads those records by index
    (ArrayRecord random access) and decodes them, so memory follows the batch, not the split.

    ``prepare(record, variant) -> float32 item_shape`` is the decoding; image i is record
    ``rows[i]`` (default: record i) decoded as ``variants[i]`` (default 0; e.g. which side of an
    image pair).
    """

    def __init__(self, records: tasks.Records, prepare, item_shape: tuple[int, ...],
                 rows: np.ndarray | None = None, variants: np.ndarray | None = None):
        self._records, self.item_shape = records, tuple(item_shape)
        self._rows = np.arange(records.size) if rows is None else np.asarray(rows, np.int64)
        self._variants = (np.zeros(len(self._rows), np.int32) if variants is None
                          else np.asarray(variants, np.int32))
        self.dtype = np.dtype(np.float32)
        # Traced once; tf.map_fn decodes the batch's records in parallel.
        self._decode = tf.function(lambda serialized, variants: tf.map_fn(
            lambda pair: prepare(records.parse(pair[0]), pair[1]), (serialized, variants),
            fn_output_signature=tf.TensorSpec(self.item_shape, tf.float32)),
            input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int32)])

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self),) + self.item_shape

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """Every image at once: only for sets known to be small (tests, galleries)."""
        return self[np.arange(len(self))].astype(dtype or self.dtype)

    def __getitem__(self, index) -> np.ndarray:
        index = np.asarray(index)
        flat = index.reshape(-1)
        if not len(flat):
            return np.zeros(index.shape + self.item_shape, np.float32)
        serialized = self._records.fetch(self._rows[flat].tolist())
        return self._decode(tf.constant(serialized, tf.string),
                            tf.constant(self._variants[flat])).numpy().reshape(
            index.shape + self.item_shape)


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """One split of an image-text source. N images, T captions, R boxed phrases."""
    images: ImageTable  # float32 [N, S, S, 3], CLIP-normalised, decoded when indexed
    caption_ids: np.ndarray  # int32 [T, L]
    caption_image: np.ndarray  # int32 [T]: index of the image each caption describes
    captions: tuple[str, ...]  # [T] cleaned caption strings
    phrase_ids: np.ndarray  # int32 [R, L]
    phrases: tuple[str, ...]  # [R] cleaned phrase strings
    phrase_image: np.ndarray  # int32 [R]
    phrase_boxes: np.ndarray  # float32 [R, 4] normalised (cx, cy, w, h)
    labels: np.ndarray | None  # int32 [N], when the source has a ``label`` class feature
    label_names: tuple[str, ...]

    @property
    def num_images(self) -> int:
        return len(self.images)


@dataclasses.dataclass(frozen=True)
class VideoSet:
    """One split of a video source. N clips of F frames, T captions."""
    frames: ImageTable  # float32 [N, F, S, S, 3], CLIP-normalised, decoded when indexed
    caption_ids: np.ndarray  # int32 [T, L]
    caption_video: np.ndarray  # int32 [T]: index of the clip each caption describes
    captions: tuple[str, ...]  # [T] cleaned caption strings

    @property
    def num_videos(self) -> int:
        return len(self.frames)


class Tokenizer:
    """Cleans and tokenises strings to ``cls tokens sep`` [length] like the training tasks."""

    def __init__(self, vocab_config, length: int):
        self.vocab = tasks.make_vocabulary(vocab_config)
        self.specials = vocab_lib.special_ids(self.vocab)
        self.length = length

    def __call__(self, texts) -> np.ndarray:
        """list of strings (already cleaned or not) -> int32 [len(texts), length]."""
        cleaned = text_ops.clean_caption(tf.constant(list(texts), tf.string), max_words=10_000)
        return text_ops.tokenize_wrapped(self.vocab, self.specials, cleaned,
                                         self.length).numpy()

    def mask(self, ids: np.ndarray) -> np.ndarray:
        return (ids != self.specials.pad).astype(np.int32)


def ordered_split(builder, split: str, max_images: int, prepare, encoded: str = 'image'):
    """(records, dataset): the split's records with the bytes of feature ``encoded`` ('image';
    'frames' for video) left encoded, and ``prepare`` mapped over its first ``max_images``
    records (0: all) in stored order (parallel, deterministic)."""
    import tensorflow_datasets as tfds
    records = tasks.open_records(builder, split, {encoded: tfds.decode.SkipDecoding()})
    return records, tasks.ordered(records, max_images).map(
        prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _image_shape(encoded: tf.Tensor) -> tf.Tensor:
    """[height, width] of an encoded image, from the JPEG header when it is one."""
    return tf.cond(tf.io.is_jpeg(encoded), lambda: tf.image.extract_jpeg_shape(encoded)[:2],
                   lambda: tf.shape(image_ops.decode_rgb(encoded))[:2])


def default_source(data_config, stream: str = 'image_text') -> str:
    """The source of the first task of ``data.streams.<stream>.mixture``."""
    if stream not in data_config.streams:
        raise ValueError(f'config.data.streams has no {stream!r} stream to take the evaluation '
                         'source from; name config.evaluate.<evaluator>.source.')
    task = data_config.streams[stream].mixture[0][0]
    for name in tasks.sources(data_config):
        if task in (f'{name}_{stream}', f'{name}_vqa_{stream}'):
            return name
    raise ValueError(f'data.streams.{stream}.mixture starts with {task!r}, which is no '
                     f"source's {stream} task; name config.evaluate.<evaluator>.source.")


def check_sources(config, names) -> None:
    """Resolves the data source of each evaluator in ``names`` that names none (its
    ``config.evaluate.<name>.source`` is ''), as :func:`load` and :func:`load_video` will: a
    run whose data lacks the default stream fails here, before training, with the one-line
    error of :func:`default_source`, not at its first evaluation."""
    from xfm_jax import evaluators
    for name in names:
        if not config.evaluate[name].get('source', 'named'):
            default_source(config.data, 'video' if name in evaluators.VIDEO else 'image_text')


def _check_data(config) -> None:
    if 'data' not in config:
        raise ValueError('Evaluation reads data through config.data (configs/data.py), which '
                         'this config lacks (the :tiny preset); use :runlocal or add a data '
                         'section.')


def _data_json(config) -> str:
    """The data config as hashable JSON: loaders are cached on it, so several evaluators read
    a split once."""
    return json.dumps(config.data.to_dict(), sort_keys=True, default=str)


def _builder(data_json: str, source_name: str, schema: str, split: str):
    """(data config, source, prepared TFDS builder) after checking schema and split."""
    import ml_collections
    data_config = ml_collections.ConfigDict(json.loads(data_json))
    all_sources = tasks.sources(data_config)
    if source_name not in all_sources:
        raise ValueError(f'Unknown evaluation source {source_name!r}; known sources: '
                         f'{sorted(all_sources)}.')
    source = all_sources[source_name]
    if source.schema != schema:
        raise ValueError(f'Evaluation source {source_name!r} has schema {source.schema!r}; '
                         f'this evaluation needs the {schema!r} schema.')
    builder = tasks.load_builder(source, data_config.tfds_data_dir)
    if split not in builder.info.splits:
        raise evaluators.SourceLacks(  # e.g. a user source without validation_path
            f'source {source_name!r} ({source.builder}) has no split {split!r}; it has '
            f'{sorted(builder.info.splits)}.')
    return data_config, source, builder


def load(config, source: str, split: str, max_images: int = 0) -> EvalSet:
    """The first ``max_images`` (0: all) examples of ``split`` of ``source`` (a name in
    ``xfm_jax.data.tasks.sources(config.data)``; '': :func:`default_source`), at
    ``config.model.vision.image_size``."""
    _check_data(config)
    return _load(_data_json(config), source or default_source(config.data), split,
                 int(max_images), int(config.model.vision.image_size), streams.text_length(config))


@functools.lru_cache(maxsize=4)
def _load(data_json: str, source_name: str, split: str, max_images: int, image_size: int,
          length: int) -> EvalSet:
    data_config, source, builder = _builder(data_json, source_name, 'image_text', split)
    has_label = 'label' in builder.info.features
    label_names = tuple(builder.info.features['label'].names) if has_label else ()
    tokenizer = Tokenizer(data_config.vocab, length)
    max_words = data_config.caption_max_words

    def prepare(ex):
        height, width = tf.unstack(tf.cast(_image_shape(ex['image']), tf.float32))
        captions = text_ops.clean_caption(ex['captions'], max_words)
        phrases = text_ops.clean_caption(ex['objects']['phrase'], max_words)
        x, y, w, h = tf.unstack(tf.reshape(ex['objects']['bbox'], [-1, 4]), axis=-1)
        out = {
            'captions': captions,
            'caption_ids': text_ops.tokenize_wrapped(tokenizer.vocab, tokenizer.specials,
                                                     captions, length),
            'phrases': phrases,
            'phrase_ids': text_ops.tokenize_wrapped(tokenizer.vocab, tokenizer.specials,
                                                    phrases, length),
            # The whole image is resized to a square, so normalised coordinates carry over.
            'boxes': tf.stack([(x + w / 2) / width, (y + h / 2) / height, w / width,
                               h / height], -1),
        }
        if has_label:
            out['label'] = tf.cast(ex['label'], tf.int32)
        return out

    records, ds = ordered_split(builder, split, max_images, prepare)
    caption_ids, caption_image, captions = [], [], []
    phrase_ids, phrases, phrase_image, boxes, labels = [], [], [], [], []
    num_images = 0
    for i, ex in enumerate(ds.as_numpy_iterator()):
        num_images += 1
        caption_ids.append(ex['caption_ids'])
        caption_image += [i] * len(ex['caption_ids'])
        captions += [c.decode() for c in ex['captions']]
        phrase_ids.append(ex['phrase_ids'])
        phrases += [p.decode() for p in ex['phrases']]
        phrase_image += [i] * len(ex['phrase_ids'])
        boxes.append(ex['boxes'])
        if has_label:
            labels.append(ex['label'])
    if not num_images:
        raise ValueError(f'{source.builder} split {split!r} is empty.')
    return EvalSet(
        images=ImageTable(records, lambda ex, _: resized_image(ex['image'], image_size),
                          (image_size, image_size, 3), rows=np.arange(num_images)),
        caption_ids=np.concatenate(caption_ids).astype(np.int32).reshape(-1, length),
        caption_image=np.asarray(caption_image, np.int32), captions=tuple(captions),
        phrase_ids=np.concatenate(phrase_ids).astype(np.int32).reshape(-1, length),
        phrases=tuple(phrases),
        phrase_image=np.asarray(phrase_image, np.int32),
        phrase_boxes=np.concatenate(boxes).astype(np.float32).reshape(-1, 4),
        labels=np.asarray(labels, np.int32) if has_label else None, label_names=label_names)


def resized_image(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded bytes -> float32 [S, S, 3]: decoded, resized whole, CLIP-normalised."""
    return image_ops.normalize(image_ops.resize(image_ops.decode_rgb(encoded), image_size))


def frame_indices(total: tf.Tensor, num_frames: int) -> tf.Tensor:
    """The middle frame of each of ``num_frames`` equal segments of a ``total``-frame clip: the
    deterministic counterpart of training's one random frame per segment (data/augment.py)."""
    centres = (tf.range(num_frames, dtype=tf.float32) + 0.5) * tf.cast(total, tf.float32)
    return tf.minimum(tf.cast(centres / num_frames, tf.int32), total - 1)


def load_video(config, source: str, split: str, max_videos: int = 0) -> VideoSet:
    """The first ``max_videos`` (0: all) clips of ``split`` of a video-schema ``source`` ('':
    the first source of ``data.streams.video.mixture``), ``config.model.video_frames`` frames
    each (:func:`frame_indices`), at ``config.model.vision.image_size``; captions tokenised to
    ``data.streams.video.text_len``."""
    _check_data(config)
    if not config.model.video_frames:
        raise ValueError('Video evaluation needs a model with a video path '
                         '(config.model.video_frames > 0: X²-VLM).')
    stream = 'video' if 'video' in config.data.streams else 'image_text'
    length = streams.text_length(config, stream)
    return _load_video(_data_json(config), source or default_source(config.data, 'video'), split,
                       int(max_videos), int(config.model.vision.image_size), length,
                       int(config.model.video_frames))


@functools.lru_cache(maxsize=2)
def _load_video(data_json: str, source_name: str, split: str, max_videos: int, image_size: int,
                length: int, num_frames: int) -> VideoSet:
    data_config, source, builder = _builder(data_json, source_name, 'video', split)
    tokenizer = Tokenizer(data_config.vocab, length)
    max_words = data_config.caption_max_words

    def clip(ex, _):
        picked = tf.gather(ex['frames'], frame_indices(tf.shape(ex['frames'])[0], num_frames))
        return tf.map_fn(lambda f: resized_image(f, image_size), picked,
                         fn_output_signature=tf.TensorSpec([image_size, image_size, 3],
                                                           tf.float32))

    def prepare(ex):
        captions = text_ops.clean_caption(ex['captions'], max_words)
        return {'captions': captions,
                'caption_ids': text_ops.tokenize_wrapped(tokenizer.vocab, tokenizer.specials,
                                                         captions, length)}

    records, ds = ordered_split(builder, split, max_videos, prepare, encoded='frames')
    caption_ids, caption_video, captions = [], [], []
    num_videos = 0
    for i, ex in enumerate(ds.as_numpy_iterator()):
        num_videos += 1
        caption_ids.append(ex['caption_ids'])
        caption_video += [i] * len(ex['caption_ids'])
        captions += [c.decode() for c in ex['captions']]
    if not num_videos:
        raise ValueError(f'{source.builder} split {split!r} is empty.')
    return VideoSet(
        frames=ImageTable(records, clip, (num_frames, image_size, image_size, 3),
                          rows=np.arange(num_videos)),
        caption_ids=np.concatenate(caption_ids).astype(np.int32).reshape(-1, length),
        caption_video=np.asarray(caption_video, np.int32), captions=tuple(captions))
