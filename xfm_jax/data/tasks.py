"""seqio Tasks (one per source and stream) and Mixtures (one per stream) built from a data config.

A task reads a TFDS source in one of the canonical schemas (builders/schema.py), cleans and
tokenises its texts and emits the stream's *raw* record; random augmentation and masking happen
later in pipeline.py, seeded per example. Raw records per stream (L = text length):

  text:       text_ids int32 [L]
  image:      image string []
  image_text: image string [], image_id int32 [], text_ids int32 [L]
  region:     image, image_id, caption_ids int32 [C, L] (whole-image captions, C >= 0),
              boxes float32 [M, 4] (x, y, w, h source pixels), phrase_ids int32 [M, L]
  video:      frames string [T], video_id int32 [], text_ids int32 [L]

Every record also carries ``skip`` int32 [] (0 = usable, else an index into SKIP_REASONS) so the
pipeline can drop bad records *and count them*; a tf.data filter here would lose them silently.
Every feature is declared (images via a pass-through vocabulary) because Mixtures drop
undeclared features.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
from typing import Callable

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from xfm_jax.data import text_ops, vocab as vocab_lib

SKIP_REASONS = ('ok', 'empty_text', 'no_boxes')
STREAMS = ('text', 'image', 'image_text', 'region', 'video')


@dataclasses.dataclass(frozen=True)
class Source:
    """A TFDS dataset: the module that registers its builder, the builder name and config."""
    module: str
    builder: str  # tfds name incl. config, e.g. 'xfm_synthetic/scenes_64'
    schema: str  # 'image_text' | 'video' | 'text' (builders/schema.py)
    qa: bool = False  # has question-answer pairs (synthetic scenes, easy-VQA)


SOURCES = {
    'xfm_synthetic_scenes': Source('xfm_jax.data.builders.synthetic', 'xfm_synthetic/scenes_64',
                                   'image_text', qa=True),
    'xfm_synthetic_scenes_224': Source('xfm_jax.data.builders.synthetic',
                                       'xfm_synthetic/scenes_224', 'image_text', qa=True),
    'xfm_synthetic_clips': Source('xfm_jax.data.builders.synthetic', 'xfm_synthetic/clips_64',
                                  'video'),
    'xfm_synthetic_sentences': Source('xfm_jax.data.builders.synthetic',
                                      'xfm_synthetic/sentences', 'text'),
}

# Streams each schema can feed; 'vqa_image_text' reads question-answer pairs as captions.
_SCHEMA_STREAMS = {'image_text': ('image_text', 'image', 'region'), 'video': ('video',),
                   'text': ('text',)}


def task_names() -> list[str]:
    """Every task name that ``register`` knows: f'{source}_{stream}' (and '_vqa_image_text')."""
    names = []
    for source_name, source in SOURCES.items():
        names += [f'{source_name}_{s}' for s in _SCHEMA_STREAMS[source.schema]]
        if source.qa:
            names.append(f'{source_name}_vqa_image_text')
    return names


def load_builder(source: Source, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """The source's builder, prepared (built) on first use; builders never touch the network."""
    importlib.import_module(source.module)
    builder = tfds.builder(source.builder, data_dir=data_dir)
    if not tf.io.gfile.exists(os.path.join(builder.data_dir, 'dataset_info.json')):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            try_download_gcs=False))
    return builder


def _dataset_fn(source: Source, data_dir: str | None, split: str, shuffle_files: bool,
                seed: int | None = None) -> tf.data.Dataset:
    builder = load_builder(source, data_dir)
    skip = tfds.decode.SkipDecoding()  # images stay encoded: decoding is fused with the crop
    decoders = {'frames': skip} if source.schema == 'video' else (
        {'image': skip} if source.schema == 'image_text' else None)
    read_config = tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=1)
    return builder.as_dataset(split=split, shuffle_files=shuffle_files, decoders=decoders,
                              read_config=read_config)


# --- Preprocessors: canonical schema -> stream raw record ------------------------------------------

def _image_id(key: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.strings.to_hash_bucket_fast(key, 2**31 - 1), tf.int32)


def _skip_if(condition: tf.Tensor, reason: str) -> tf.Tensor:
    return tf.where(condition, SKIP_REASONS.index(reason), 0)


def _text_record(ex, *, tokenize):
    text = ex['text']
    return {'text_ids': tokenize(text), 'key': tf.strings.substr(text, 0, 40),
            'skip': _skip_if(tf.strings.length(tf.strings.strip(text)) == 0, 'empty_text')}


def _pairs(ex, *, tokenize, clean, use_qa):
    """One image with C captions -> C (image, caption) records."""
    if use_qa:
        captions = tf.strings.join([ex['qa']['question'], ex['qa']['answer']], separator=' ')
    else:
        captions = ex['captions']
    cleaned = clean(captions)
    count = tf.shape(cleaned)[0]
    return tf.data.Dataset.from_tensor_slices({
        'image': tf.fill([count], ex['image']),
        'image_id': tf.fill([count], _image_id(ex['image_key'])),
        'key': tf.fill([count], ex['image_key']),
        'text_ids': tokenize(cleaned),
        'skip': tf.where(tf.strings.length(cleaned) == 0, SKIP_REASONS.index('empty_text'), 0),
    })


def _image_record(ex):
    return {'image': ex['image'], 'key': ex['image_key'], 'skip': tf.constant(0)}


def _region_record(ex, *, tokenize, clean):
    phrases = clean(ex['objects']['phrase'])
    return {'image': ex['image'], 'image_id': _image_id(ex['image_key']), 'key': ex['image_key'],
            'caption_ids': tokenize(clean(ex['captions'])),
            'boxes': tf.reshape(ex['objects']['bbox'], [-1, 4]),
            'phrase_ids': tokenize(phrases),
            'skip': _skip_if(tf.shape(phrases)[0] == 0, 'no_boxes')}


def _video_pairs(ex, *, tokenize, clean):
    cleaned = clean(ex['captions'])
    count = tf.shape(cleaned)[0]
    frames = ex['frames']
    return tf.data.Dataset.from_tensor_slices({
        'frames': tf.tile(frames[None], [count, 1]),
        'video_id': tf.fill([count], _image_id(ex['video_key'])),
        'key': tf.fill([count], ex['video_key']),
        'text_ids': tokenize(cleaned),
        'skip': tf.where(tf.strings.length(cleaned) == 0, SKIP_REASONS.index('empty_text'), 0),
    })


def _tag_source(ex, *, task):
    key = ex.pop('key', tf.constant(''))
    return {**ex, 'source': tf.strings.join([task, key], separator=':')}


def _map(fn: Callable) -> Callable:
    return lambda ds: ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _flat_map(fn: Callable) -> Callable:
    return lambda ds: ds.flat_map(fn)


def output_features(stream: str) -> dict[str, seqio.Feature]:
    """Declared features per stream (see the module docstring)."""
    passthrough = seqio.PassThroughVocabulary(1)

    def feature(dtype, rank):
        return seqio.Feature(passthrough, add_eos=False, dtype=dtype, rank=rank)

    ids, image, id_ = feature(tf.int32, 1), feature(tf.string, 0), feature(tf.int32, 0)
    per_stream = {
        'text': {'text_ids': ids},
        'image': {'image': image},
        'image_text': {'image': image, 'image_id': id_, 'text_ids': ids},
        'region': {'image': image, 'image_id': id_, 'caption_ids': feature(tf.int32, 2),
                   'boxes': feature(tf.float32, 2), 'phrase_ids': feature(tf.int32, 2)},
        'video': {'frames': feature(tf.string, 1), 'video_id': id_, 'text_ids': ids},
    }
    # skip: 0 or an index into SKIP_REASONS; source: 'task:key', named when a record is skipped.
    return {**per_stream[stream], 'skip': id_, 'source': image}


def register(config) -> dict[str, str]:
    """Registers the tasks and per-stream mixtures a data config uses (idempotent: re-registers).

    Args:
      config: the data ConfigDict (configs/data.py): ``vocab``, ``tfds_data_dir``,
        ``caption_max_words`` and ``streams.{name}.{mixture, text_len}``.
    Returns: {stream: mixture name}.
    """
    vocab = make_vocabulary(config.vocab)
    specials = vocab_lib.special_ids(vocab)
    known = set(task_names())
    mixtures = {}
    for stream, stream_config in config.streams.items():
        rates = []
        for task_name, rate in stream_config.mixture:
            if task_name not in known:
                raise ValueError(f'data.streams.{stream}.mixture names unknown task '
                                 f'{task_name!r}; known tasks: {sorted(known)}.')
            source_name, task_stream = _split_task_name(task_name)
            if task_stream.removeprefix('vqa_') != stream:
                raise ValueError(f'Task {task_name!r} feeds stream {task_stream!r}, not '
                                 f'{stream!r} (data.streams.{stream}.mixture).')
            _register_task(task_name, SOURCES[source_name], stream, vocab, specials,
                           text_len=stream_config.get('text_len', 0),
                           data_dir=config.tfds_data_dir,
                           max_words=config.caption_max_words,
                           use_qa=task_stream.startswith('vqa_'))
            rates.append((task_name, float(rate)))
        name = f'xfm_{stream}_mixture'
        seqio.MixtureRegistry.remove(name)
        seqio.MixtureRegistry.add(name, rates)
        mixtures[stream] = name
    return mixtures


def _split_task_name(task_name: str) -> tuple[str, str]:
    for stream in sorted(('vqa_image_text',) + STREAMS, key=len, reverse=True):
        if task_name.endswith('_' + stream):
            return task_name[:-len(stream) - 1], stream
    raise ValueError(f'Task name {task_name!r} does not end with a stream name.')


def _register_task(name, source, stream, vocab, specials, *, text_len, data_dir, max_words,
                   use_qa):
    tokenize = functools.partial(text_ops.tokenize_wrapped, vocab, specials, length=text_len)
    clean = functools.partial(text_ops.clean_caption, max_words=max_words)
    preprocessors = {
        'text': [_map(functools.partial(_text_record, tokenize=tokenize))],
        'image': [_map(_image_record)],
        'image_text': [_flat_map(functools.partial(_pairs, tokenize=tokenize, clean=clean,
                                                   use_qa=use_qa))],
        'region': [_map(functools.partial(_region_record, tokenize=tokenize, clean=clean))],
        'video': [_flat_map(functools.partial(_video_pairs, tokenize=tokenize, clean=clean))],
    }[stream]
    preprocessors.append(_map(functools.partial(_tag_source, task=name)))
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            functools.partial(_dataset_fn, source, data_dir), splits=('train', 'validation')),
        preprocessors=preprocessors,
        output_features=output_features(stream),
        shuffle_buffer_size=1000)


def make_vocabulary(vocab_config) -> seqio.Vocabulary:
    """The vocabulary named by ``data.vocab`` (configs/data.py documents the kinds)."""
    kind = vocab_config.kind
    if kind == 'wordpiece':
        return vocab_lib.WordPieceVocabulary(vocab_config.path)
    if kind == 'synthetic':  # written from the synthetic grammar, laid out on the model's ids
        from xfm_jax.data.builders import synthetic
        if not os.path.exists(vocab_config.path):
            vocab_lib.synthetic_vocab_file(
                synthetic.WORDS, vocab_config.path, vocab_size=vocab_config.vocab_size,
                pad_id=vocab_config.pad_id, cls_id=vocab_config.cls_id,
                sep_id=vocab_config.sep_id, mask_id=vocab_config.mask_id)
        return vocab_lib.WordPieceVocabulary(vocab_config.path)
    if kind == 'bpe':
        return vocab_lib.ByteBPEVocabulary(vocab_config.path, vocab_config.merges_path)
    if kind == 'sentencepiece':
        return seqio.SentencePieceVocabulary(vocab_config.path)
    raise ValueError(f"data.vocab.kind must be 'wordpiece', 'bpe', 'sentencepiece' or "
                     f"'synthetic', got {kind!r}.")
