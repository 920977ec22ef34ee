"""seqio Tasks (one per source and stream) and Mixtures (one per stream) built from a data config.

A task reads a TFDS source in one of the canonical schemas (builders/schema.py), cleans and
tokenises its texts and emits the stream's *raw* record (the map its record in xfm_jax/streams/
names, with its ``record_features``); random augmentation and masking happen later in
pipeline.py, seeded per example. Raw records per stream (L = text length):

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

import collections
import dataclasses
import functools
import importlib
import logging
import os
from typing import Callable

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from xfm_jax import paths, streams as streams_lib
from xfm_jax.data import text_ops, vocab as vocab_lib
from xfm_jax.data.builders import schema, user as user_builder

SKIP_REASONS = ('ok', 'empty_text', 'no_boxes')


@dataclasses.dataclass(frozen=True)
class Source:
    """A TFDS dataset: the module that registers its builder, the builder name and config."""
    module: str
    builder: str  # tfds name incl. config, e.g. 'xfm_synthetic/scenes_64'
    schema: str  # 'image_text' | 'image_pair' | 'video' | 'text' (builders/schema.py)
    qa: bool = False  # has question-answer pairs (synthetic scenes, easy-VQA)
    regions: bool = False  # has boxed phrases (feeds the region stream)
    kwargs: tuple = ()  # builder constructor kwargs as sorted (name, value) pairs


_SYNTHETIC = 'xfm_jax.data.builders.synthetic'
_CORPORA = 'xfm_jax.data.builders.text_corpora'
SOURCES = {
    'xfm_synthetic_scenes': Source(_SYNTHETIC, 'xfm_synthetic/scenes_64', 'image_text', qa=True,
                                   regions=True),
    'xfm_synthetic_scenes_224': Source(_SYNTHETIC, 'xfm_synthetic/scenes_224', 'image_text',
                                       qa=True, regions=True),
    'xfm_synthetic_clips': Source(_SYNTHETIC, 'xfm_synthetic/clips_64', 'video'),
    'xfm_synthetic_sentences': Source(_SYNTHETIC, 'xfm_synthetic/sentences', 'text'),
    # Installed offline sets (builders/*.py name the install command when the files are missing).
    'easy_vqa': Source('xfm_jax.data.builders.easy_vqa', 'xfm_easy_vqa', 'image_text', qa=True),
    'fashion_mnist': Source('xfm_jax.data.builders.fashion_mnist', 'xfm_fashion_mnist',
                            'image_text'),
    'movie_reviews': Source('xfm_jax.data.builders.movie_reviews', 'xfm_movie_reviews', 'text'),
    'wordnet_glosses': Source(_CORPORA, 'xfm_text_corpora/wordnet_glosses', 'text'),
    'fortunes': Source(_CORPORA, 'xfm_text_corpora/fortunes', 'text'),
}

def sources(config=None) -> dict[str, Source]:
    """SOURCES plus ``config.user_sources`` ({name: xfm_user config fields}, builders/user.py),
    with ``config.builder_kwargs`` ({source: {kwarg: value}}) applied."""
    config = config or {}
    user = {}
    for name, fields in (config.get('user_sources') or {}).items():
        fields = dict(fields)
        if fields.get('format') not in user_builder.FORMATS:
            raise ValueError(f"data.user_sources.{name}.format must be one of "
                             f"{sorted(user_builder.FORMATS)}, got {fields.get('format')!r}.")
        user[name] = Source(user_builder.__name__, 'xfm_user',
                            user_builder.FORMATS[fields['format']],
                            qa=fields['format'] in user_builder.QA_FORMATS,
                            regions=fields['format'] in user_builder.REGION_FORMATS,
                            kwargs=(('config', user_builder.UserConfig(name=name, **fields)),))
    clash = set(user) & set(SOURCES)
    if clash:
        raise ValueError(f'data.user_sources names {sorted(clash)} are built-in sources.')
    all_sources = {**SOURCES, **user}
    overrides = config.get('builder_kwargs') or {}
    unknown = set(overrides) - set(all_sources)
    if unknown:
        raise ValueError(f'data.builder_kwargs names unknown sources {sorted(unknown)}; known: '
                         f'{sorted(all_sources)}.')
    return {name: dataclasses.replace(source, kwargs=tuple(sorted(
        {**dict(source.kwargs), **overrides.get(name, {})}.items())))
        for name, source in all_sources.items()}


def task_names(config=None) -> list[str]:
    """Every task name that ``register`` knows: f'{source}_{stream}' for each stream the
    source's schema feeds (``Stream.schemas``, ``source_flag``), and f'{source}_vqa_{stream}',
    question-answer pairs as captions, where the source has them and the stream a QA form.
    Image pairs (NLVR2) feed no pre-training stream, only fine-tuning (finetuning/nlvr.py)."""
    names = []
    for source_name, source in sources(config).items():
        for stream in streams_lib.STREAMS.values():
            if source.schema not in stream.schemas:
                continue
            if not stream.source_flag or getattr(source, stream.source_flag):
                names.append(f'{source_name}_{stream.name}')
            if source.qa and stream.qa_reads:
                names.append(f'{source_name}_vqa_{stream.name}')
    return names


def load_builder(source: Source, data_dir: str | None, beam_runner=None, beam_options=None,
                 file_format: str = 'array_record') -> tfds.core.DatasetBuilder:
    """The source's builder, prepared (built) on first use as ArrayRecord files (random access:
    the pipeline reads records by index); builders never touch the network. A Beam runner or
    options (``xfm_jax.data.build``) make a builder that supports it (``xfm_user``) build as a
    Beam pipeline; ``file_format='tfrecord'`` only builds (to ``gs://`` from Dataflow, then
    converted: docs/data.md)."""
    if data_dir and paths.is_remote(data_dir) and file_format == 'array_record':
        raise ValueError(
            f'data.tfds_data_dir={data_dir}: the pipeline reads ArrayRecord files by index, and '
            'array_record opens local paths only; mount the bucket (e.g. gcsfuse '
            '--implicit-dirs BUCKET /mnt/BUCKET) and pass the mounted path. Source files '
            '(user_sources paths, globs) may stay on gs://.')
    importlib.import_module(source.module)
    builder = tfds.builder(source.builder, data_dir=data_dir, file_format=file_format,
                           **dict(source.kwargs))
    if not tf.io.gfile.exists(os.path.join(builder.data_dir, 'dataset_info.json')):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            try_download_gcs=False, beam_runner=beam_runner, beam_options=beam_options))
    elif builder.info.file_format != tfds.core.FileFormat(file_format):
        raise ValueError(f'{builder.data_dir} holds {builder.info.file_format.value} files from '
                         'an older xfm-jax; the pipeline reads ArrayRecord by index. Delete '
                         'that folder to rebuild it.')
    return builder


def build_counts(source: Source, data_dir: str | None, split: str) -> dict[str, dict[str, int]]:
    """{'dropped': {reason: n}, 'converted': {kind: n}}: the records the source's builder dropped,
    and the kept images it converted, while building ``split``."""
    counts = schema.accounting(load_builder(source, data_dir).info.metadata or {}, split)
    return {'dropped': counts.get('bad', {}), 'converted': counts.get('converted', {})}


class Records:
    """Random access to one split of a prepared source: ``read(indices)`` maps a dataset of int64
    record indices to parsed records, in the order of the indices.

    ``fetch(list of indices) -> list of serialized records`` (ArrayRecord reads, in C++ threads),
    ``parse(serialized) -> record`` (TFDS's deserialisation, in the tf.data graph).
    """

    _FETCH_BLOCK = 64  # indices per Python call: the call's overhead is paid once per block

    def __init__(self, size: int, fetch: Callable[[list], list], parse: Callable):
        self.size, self.fetch, self.parse = size, fetch, parse

    def read(self, indices: tf.data.Dataset) -> tf.data.Dataset:
        def fetch(block):
            return np.asarray(self.fetch(block.tolist()), dtype=object)

        def fetch_tf(block):
            serialized = tf.numpy_function(fetch, [block], tf.string, stateful=False)
            return tf.ensure_shape(serialized, block.shape)

        return (indices.batch(self._FETCH_BLOCK).map(fetch_tf).unbatch()
                .map(self.parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))


def open_records(builder: tfds.core.DatasetBuilder, split: str, decoders=None,
                 features: tuple[str, ...] = ()) -> Records:
    """Records of a prepared builder's split (``decoders`` as in ``builder.as_dataset``),
    holding only the top-level ``features`` named (default: all); the others are never parsed."""
    if split not in builder.info.splits:
        raise ValueError(f'{builder.name} has no split {split!r}; it has '
                         f'{sorted(builder.info.splits)}.')
    serialized = builder.as_data_source(split).data_source  # raw bytes by index
    stored = builder.info.features
    missing = [name for name in features if name not in stored]
    if missing:
        raise ValueError(f'{builder.name} has no features {missing}; it has {sorted(stored)}.')
    features = (tfds.features.FeaturesDict({name: stored[name] for name in features})
                if features else stored)
    return Records(len(serialized), serialized.__getitems__,
                   lambda s: features.deserialize_example(s, decoders=decoders))


def ordered(records: Records, limit: int = 0) -> tf.data.Dataset:
    """The first ``limit`` (0: all) records in stored order."""
    return records.read(tf.data.Dataset.range(min(limit or records.size, records.size)))


def source_records(source: Source, data_dir: str | None, split: str,
                   features: tuple[str, ...] = ()) -> Records:
    """A source's records with images (frames) left encoded: decoding is fused with the crop.
    ``features``: as in ``open_records``."""
    skip = tfds.decode.SkipDecoding()
    decoders = {'frames': skip} if source.schema == 'video' else (
        {'image': skip} if source.schema == 'image_text' else None)
    if features:
        decoders = {name: skip for name, skip in (decoders or {}).items() if name in features}
    return open_records(load_builder(source, data_dir), split, decoders, features)


def with_pick_seed(records: tf.data.Dataset, seeds: tf.data.Dataset) -> tf.data.Dataset:
    """Adds ``pick_seed`` int64 [2] to every record: the stateless seed that chooses which of an
    image's (or clip's) captions the record yields (see ``pair_record``)."""
    return tf.data.Dataset.zip(records, seeds).map(lambda ex, s: {**ex, 'pick_seed': s})


class _RecordSource(seqio.FunctionDataSource):
    """The seqio source of a task: ``get_dataset`` reads the split in stored order (seqio's own
    readers and tests); ``records(split)`` is the random access the pipeline reads by index."""

    def __init__(self, source: Source, data_dir: str | None, features: tuple[str, ...]):
        self.xfm_source, self.data_dir, self.features = source, data_dir, features
        super().__init__(self._stored_order, splits=('train', 'validation'))

    def _stored_order(self, split: str, shuffle_files: bool, seed: int | None = None):
        del shuffle_files, seed  # the pipeline shuffles by record index (pipeline.py)
        records = self.records(split)
        seeds = tf.data.Dataset.range(records.size).map(
            lambda i: tf.stack([tf.constant(0, tf.int64), i]))
        return with_pick_seed(ordered(records), seeds)

    def records(self, split: str) -> Records:
        return source_records(self.xfm_source, self.data_dir, split, self.features)


# --- Preprocessors: canonical schema -> stream raw record ------------------------------------------

def _image_id(key: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.strings.to_hash_bucket_fast(key, 2**31 - 1), tf.int32)


def _skip_if(condition: tf.Tensor, reason: str) -> tf.Tensor:
    return tf.where(condition, SKIP_REASONS.index(reason), 0)


# Every maker takes the same keywords (Stream.record); each reads the ones it needs.

def text_record(ex, *, tokenize, clean, use_qa):
    del clean, use_qa  # sentences are tokenised as they are
    text = ex['text']
    return {'text_ids': tokenize(text), 'key': tf.strings.substr(text, 0, 40),
            'skip': _skip_if(tf.strings.length(tf.strings.strip(text)) == 0, 'empty_text')}


def _pick(texts: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """One of ``texts`` [C], drawn with the stateless ``seed``; '' when C = 0."""
    count = tf.shape(texts)[0]
    choice = tf.random.stateless_uniform([], seed, 0, tf.maximum(count, 1), tf.int32)
    return tf.concat([texts, ['']], 0)[tf.minimum(choice, count)]


def pair_record(ex, *, tokenize, clean, use_qa):
    """One image with C captions -> one (image, caption) record: a caption drawn per visit, so
    every visit of the image is one addressable record (the reference recipes draw the same)."""
    if use_qa:
        captions = tf.strings.join([ex['qa']['question'], ex['qa']['answer']], separator=' ')
    else:
        captions = ex['captions']
    caption = clean(_pick(captions, ex['pick_seed']))
    return {'image': ex['image'], 'image_id': _image_id(ex['image_key']), 'key': ex['image_key'],
            'text_ids': tokenize(caption),
            'skip': _skip_if(tf.strings.length(caption) == 0, 'empty_text')}


def image_record(ex, *, tokenize, clean, use_qa):
    del tokenize, clean, use_qa  # no text
    return {'image': ex['image'], 'key': ex['image_key'], 'skip': tf.constant(0)}


def region_record(ex, *, tokenize, clean, use_qa):
    del use_qa
    phrases = clean(ex['objects']['phrase'])
    return {'image': ex['image'], 'image_id': _image_id(ex['image_key']), 'key': ex['image_key'],
            'caption_ids': tokenize(clean(ex['captions'])),
            'boxes': tf.reshape(ex['objects']['bbox'], [-1, 4]),
            'phrase_ids': tokenize(phrases),
            'skip': _skip_if(tf.shape(phrases)[0] == 0, 'no_boxes')}


def video_record(ex, *, tokenize, clean, use_qa):
    """One clip with C captions -> one (clip, caption) record (as ``pair_record``)."""
    del use_qa
    caption = clean(_pick(ex['captions'], ex['pick_seed']))
    return {'frames': ex['frames'], 'video_id': _image_id(ex['video_key']),
            'key': ex['video_key'], 'text_ids': tokenize(caption),
            'skip': _skip_if(tf.strings.length(caption) == 0, 'empty_text')}


def _tag_source(ex, *, task):
    key = ex.pop('key', tf.constant(''))
    return {**ex, 'source': tf.strings.join([task, key], separator=':')}


def _map(fn: Callable) -> Callable:
    return lambda ds: ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def output_features(stream: str) -> dict[str, seqio.Feature]:
    """Declared features per stream: its record's ``record_features``, ``skip`` and ``source``."""
    passthrough = seqio.PassThroughVocabulary(1)

    def feature(dtype, rank):
        return seqio.Feature(passthrough, add_eos=False, dtype=tf.as_dtype(dtype), rank=rank)

    declared = streams_lib.get(stream).record_features
    # skip: 0 or an index into SKIP_REASONS; source: 'task:key', named when a record is skipped.
    return {**{name: feature(*spec) for name, spec in declared.items()},
            'skip': feature('int32', 0), 'source': feature('string', 0)}


def register(config) -> dict[str, str]:
    """Registers the tasks and per-stream mixtures a data config uses (idempotent: re-registers).

    Args:
      config: the data ConfigDict (configs/data.py): ``vocab``, ``tfds_data_dir``,
        ``caption_max_words`` and ``streams.{name}.{mixture, text_len}``.
    Returns: {stream: mixture name}.
    """
    vocab = make_vocabulary(config.vocab)
    specials = vocab_lib.special_ids(vocab)
    all_sources = sources(config)
    known = set(task_names(config))
    mixtures = {}
    for stream, stream_config in config.streams.items():
        rates = []
        for task_name, rate in stream_config.mixture:
            if task_name not in known:
                raise ValueError(f'data.streams.{stream}.mixture names unknown task '
                                 f'{task_name!r}; known tasks: {sorted(known)}.')
            source_name, task_stream = _split_task_name(task_name, all_sources)
            if task_stream.removeprefix('vqa_') != stream:
                raise ValueError(f'Task {task_name!r} feeds stream {task_stream!r}, not '
                                 f'{stream!r} (data.streams.{stream}.mixture).')
            _register_task(task_name, all_sources[source_name], stream, vocab, specials,
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


def stream_build_counts(config, stream: str, split: str) -> dict[str, dict[str, int]]:
    """``build_counts`` summed over the builders feeding ``stream`` (each source counted once)."""
    all_sources = sources(config)
    counts = {'dropped': collections.Counter(), 'converted': collections.Counter()}
    names = {_split_task_name(task, all_sources)[0]
             for task, _ in config.streams[stream].mixture}
    for name in sorted(names):
        for kind, built in build_counts(all_sources[name], config.tfds_data_dir, split).items():
            counts[kind].update(built)
    return {kind: dict(counter) for kind, counter in counts.items()}


# --- How a user source's captions fit the vocabulary and the text length ----------------------

CAPTION_SAMPLE = 1000  # captions tokenised per user source and stream at pipeline construction
SINGLE_CHARACTER_SHARE = 0.5  # above: the vocabulary spells most words letter by letter
TRUNCATED_SHARE = 0.1  # above: too many captions lose their end to text_len


def caption_fit(vocab: seqio.Vocabulary, texts: list[str], text_len: int) -> dict[str, float]:
    """How ``vocab`` tokenises ``texts`` for a stream of ``text_len`` ids (with [CLS] and [SEP]):
    {'single': share of the tokens that are one character ('a', '##s', a SentencePiece 'x'),
    'truncated': share of the texts cut at text_len, 'median': median tokens per text}."""
    ids = vocab.encode_tf(tf.constant(texts))
    if not isinstance(ids, tf.RaggedTensor):
        ids = tf.RaggedTensor.from_tensor(ids)
    lengths, flat = ids.row_lengths().numpy(), ids.flat_values.numpy()
    pieces = {i: vocab.decode([int(i)]).strip().removeprefix('##') for i in np.unique(flat)}
    return {'single': float(np.mean([len(pieces[i]) == 1 for i in flat])) if flat.size else 0.0,
            'truncated': float(np.mean(lengths > text_len - 2)),
            'median': float(np.median(lengths))}


def _sample_texts(source: Source, data_dir: str | None, task_stream: str,
                  max_words: int) -> list[str]:
    """The first CAPTION_SAMPLE non-empty texts of a source's train split, as the task's
    preprocessor tokenises them (cleaned, except the text stream's)."""
    field = {'text': 'text', 'vqa_image_text': 'qa'}.get(task_stream, 'captions')
    texts = []
    for ex in ordered(source_records(source, data_dir, 'train', (field,))).as_numpy_iterator():
        if field == 'qa':
            texts += [q + b' ' + a for q, a in zip(ex['qa']['question'], ex['qa']['answer'])]
        else:
            texts += [ex['text']] if field == 'text' else list(ex['captions'])
        if len(texts) >= CAPTION_SAMPLE:
            break
    texts = tf.constant(texts[:CAPTION_SAMPLE], tf.string)
    if field != 'text':
        texts = text_ops.clean_caption(texts, max_words=max_words)
    return [t.decode() for t in texts.numpy() if t.strip()]


def warn_on_caption_fit(config) -> None:
    """One WARNING, with the figures and the fix, per user source read by a text-bearing stream
    whose sampled captions the vocabulary splits mostly into single characters (it lacks their
    words) or ``text_len`` often truncates. Args: the data ConfigDict, as ``register``."""
    user = set(config.get('user_sources') or {})
    if not user:
        return
    all_sources, vocab = sources(config), make_vocabulary(config.vocab)
    for stream, stream_config in config.streams.items():
        if not streams_lib.get(stream).has_text:
            continue
        for task_name, _ in stream_config.mixture:
            source_name, task_stream = _split_task_name(task_name, all_sources)
            if source_name not in user:
                continue
            texts = _sample_texts(all_sources[source_name], config.tfds_data_dir, task_stream,
                                  config.caption_max_words)
            if not texts:
                continue
            fit = caption_fit(vocab, texts, stream_config.text_len)
            spelled = fit['single'] > SINGLE_CHARACTER_SHARE
            if not spelled and fit['truncated'] <= TRUNCATED_SHARE:
                continue
            fixes = []
            if spelled:
                fixes.append('an open vocabulary: --config.data.vocab.kind=wordpiece '
                             '--config.data.vocab.path=<bert-base-uncased vocab.txt>, or '
                             'kind=sentencepiece with a model from `python -m '
                             'xfm_jax.data.train_sentencepiece --corpus=<your captions>`')
            if fit['truncated'] > TRUNCATED_SHARE:
                fixes.append(f'a longer data.streams.{stream}.text_len')
            logging.warning(
                'data: user source %r (task %s): in its first %d captions, %.1f %% of the '
                'tokens are single characters (data.vocab.kind=%r) and %.1f %% of the captions '
                'are cut at data.streams.%s.text_len=%d (median %.0f tokens); use %s.', source_name,
                task_name, len(texts), 100 * fit['single'], config.vocab.kind,
                100 * fit['truncated'], stream, stream_config.text_len, fit['median'],
                ' or '.join(fixes))


def _split_task_name(task_name: str, known: dict) -> tuple[str, str]:
    """'{source}_{stream}' -> (source, stream); the stream is the part after a known source
    ('easy_vqa_image_text' is easy_vqa's image_text, not easy's vqa_image_text)."""
    qa_streams = tuple(f'vqa_{s.name}' for s in streams_lib.STREAMS.values() if s.qa_reads)
    for stream in qa_streams + tuple(streams_lib.STREAMS):
        source = task_name.removesuffix('_' + stream)
        if source != task_name and source in known:
            return source, stream
    raise ValueError(f'Task name {task_name!r} is not f"{{source}}_{{stream}}" with a source '
                     f'in {sorted(known)}.')


def _register_task(name, source, stream, vocab, specials, *, text_len, data_dir, max_words,
                   use_qa):
    record = streams_lib.get(stream)
    make_record = streams_lib.resolve(record.record)
    tokenize = functools.partial(text_ops.tokenize_wrapped, vocab, specials, length=text_len)
    clean = functools.partial(text_ops.clean_caption, max_words=max_words)
    preprocessors = [
        _map(functools.partial(make_record, tokenize=tokenize, clean=clean, use_qa=use_qa)),
        _map(functools.partial(_tag_source, task=name))]
    seqio.TaskRegistry.remove(name)
    # Preprocessors map one source record to one stream record (no filter, no flat_map), so a
    # stream record is addressed by its source record's index (pipeline.py). Only the schema
    # features the record reads are parsed (parsing a scene's boxes and question-answer pairs
    # too doubled the image_text parse time; BENCHMARKS.md).
    reads = record.qa_reads if use_qa else record.reads
    seqio.TaskRegistry.add(name, source=_RecordSource(source, data_dir, reads),
                           preprocessors=preprocessors, output_features=output_features(stream))


def make_vocabulary(vocab_config) -> seqio.Vocabulary:
    """The vocabulary named by ``data.vocab`` (configs/data.py documents the kinds)."""
    kind = vocab_config.kind
    if kind == 'wordpiece':
        return vocab_lib.WordPieceVocabulary(vocab_config.path)
    if kind == 'synthetic':  # written from the synthetic grammar, laid out on the model's ids
        from xfm_jax.data.builders import synthetic
        if not paths.resolve(vocab_config.path).exists():  # local or gs://
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


def fit_model_to_vocabulary(config) -> None:
    """Makes ``model.text``'s vocabulary size and special ids (pad, cls, sep, mask) those of
    ``data.vocab``'s file, which the data pipeline reads them from. A SentencePiece model (e.g.
    from ``python -m xfm_jax.data.train_sentencepiece`` on the user's captions) sets them in
    place, logged; any other vocabulary must already agree (a pretrained tower's ids are its
    own), else one ValueError naming each key and both values."""
    vocab = make_vocabulary(config.data.vocab)
    ids = vocab_lib.special_ids(vocab)
    text = config.model.text
    wanted = dict(pad_id=ids.pad, cls_id=ids.cls, sep_id=ids.sep, mask_id=ids.mask)
    where = f'data.vocab.path={config.data.vocab.path}'
    if config.data.vocab.kind == 'sentencepiece':
        wanted['vocab_size'] = vocab.vocab_size
        changed = {k: v for k, v in wanted.items() if text[k] != v}
        if changed:
            text.update(changed)
            logging.warning('model.text set from the SentencePiece model (%s): %s%s', where,
                            changed, '; the pretrained word embeddings of train.init_from '
                            'no longer fit and are not loaded' if 'vocab_size' in changed and
                            config.get('train', {}).get('init_from') else '')
        return
    wrong = [f'model.text.{k}={text[k]} but the vocabulary has {v}'
             for k, v in wanted.items() if text[k] != v]
    if vocab.vocab_size > text.vocab_size:
        wrong.append(f'model.text.vocab_size={text.vocab_size} is below the vocabulary\'s '
                     f'{vocab.vocab_size} tokens')
    if wrong:
        raise ValueError(f'{where} ({config.data.vocab.kind}) does not fit the model: '
                         f'{"; ".join(wrong)}.')
