"""GLUE-style text classification / regression, language encoder alone (docs/design.md §12): an
MLP head on token 0 (``<s>`` / [CLS]); the image towers are never built into the parameters.

Data (``config.task``):
  ``source``: a text source of ``xfm_jax.data.tasks`` with a label feature (``movie_reviews``:
    SST-2-like binary sentiment, or its ``score`` in [-4, 4] for regression), or ``'glue_tsv'``:
    ``{tsv_dir}/{split}.tsv`` with a header row (GLUE's train.tsv / dev.tsv; SST-2:
    ``sentence<TAB>label``).
  ``text_fields``: comma-separated columns; two make a sentence pair (MNLI, QQP, STS-B ...),
    encoded ``cls a sep [sep] b sep`` (RoBERTa's double separator) in ``text_len`` tokens.
  ``label_field``; ``label_names``: comma-separated, the label strings in class order (TSV
    classification needs them; a TFDS ClassLabel brings its own); ``regression``: one output
    trained with MSE on the float label (STS-B), scored by Pearson / Spearman.
  ``vocab_words``: > 0 writes a word-level vocabulary of the split's commonest words (tiny
    models' vocabularies are far too small for open text); 0 uses ``data.vocab``.
"""

from __future__ import annotations

import collections
import csv
import os

import flax.linen as nn
import ml_collections
import numpy as np

from xfm_jax.finetuning import common
from xfm_jax.models import heads
from xfm_jax.models.model import VisionLanguageModel

GLUE_TSV = 'glue_tsv'


class TextClassifier(nn.Module):
    """Language encoder -> MLP head on token 0 -> [B, num_outputs] logits (regression: [B, 1])."""
    model: VisionLanguageModel
    num_outputs: int
    regression: bool = False

    def setup(self):
        self.head = heads.MLPHead(self.num_outputs, self.model.text.dtype,
                                  self.model.text.param_dtype)

    def __call__(self, batch, *, train: bool = False):
        hidden = self.model.encode_text(batch['input_ids'], batch['attention_mask'], train=train)
        return self.head(hidden)

    def loss(self, batch, *, train: bool = True):
        outputs = self(batch, train=train)
        if self.regression:
            return common.regression_loss(outputs, batch['target'])
        return common.classification_loss(outputs, batch['label'])


def build(config, model: VisionLanguageModel, train_set: common.Examples, *,
          batch_shards: int) -> TextClassifier:
    del batch_shards
    if config.task.regression:
        return TextClassifier(model, 1, regression=True)
    return TextClassifier(model, len(train_set.label_names))


def evaluate(run, eval_set: common.Examples, train_set: common.Examples) -> dict[str, float]:
    outputs = run.predict(eval_set, 'text classification')
    if run.config.task.regression:
        return common.score_regression(outputs, eval_set.rows['target'],
                                       train_set.rows['target'])
    return common.score_classifier(outputs, eval_set.rows['label'], train_set.rows['label'])


# ---- reading ----------------------------------------------------------------------------------

def read_glue_tsv(path: str, text_fields: list[str], label_field: str):
    """(texts: [N] tuples of the text columns, labels: [N] strings) of a GLUE TSV file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} does not exist (task.tsv_dir/{{split}}.tsv; GLUE names '
                                'its splits train and dev).')
    with open(path, encoding='utf-8', newline='') as f:
        reader = csv.DictReader(f, delimiter='\t', quoting=csv.QUOTE_NONE)
        missing = [c for c in [*text_fields, label_field] if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f'{path}: no column(s) {missing}; the header has '
                             f'{reader.fieldnames} (set task.text_fields / task.label_field).')
        rows = [r for r in reader if r[label_field] not in (None, '')]
    return [tuple(r[c] for c in text_fields) for r in rows], [r[label_field] for r in rows]


def _read_tfds(config, split: str, text_field: str, label_field: str):
    from xfm_jax.data import tasks
    settings = config.task
    all_sources = tasks.sources(config.data)
    if settings.source not in all_sources:
        raise ValueError(f'task.source {settings.source!r} is neither {GLUE_TSV!r} nor a known '
                         f'source ({sorted(all_sources)}).')
    builder = tasks.load_builder(all_sources[settings.source], config.data.tfds_data_dir)
    features = builder.info.features
    for field in (text_field, label_field):
        if field not in features:
            raise ValueError(f'Source {settings.source!r} has no feature {field!r}; it has '
                             f'{sorted(features)}.')
    if split not in builder.info.splits:
        raise ValueError(f'{builder.name} has no split {split!r}; it has '
                         f'{sorted(builder.info.splits)}.')
    names = tuple(getattr(features[label_field], 'names', ()))
    texts, labels = [], []
    for ex in tasks.ordered(tasks.open_records(builder, split)).as_numpy_iterator():
        texts.append((ex[text_field].decode('utf-8'),))
        labels.append(ex[label_field])
    return texts, labels, names


def read_texts(config, split: str):
    """(texts [N] tuples, labels [N] raw, label names) of a split, without tokenising."""
    settings = config.task
    fields = [f.strip() for f in settings.text_fields.split(',') if f.strip()]
    if not 1 <= len(fields) <= 2:
        raise ValueError(f'task.text_fields must name one or two columns, got '
                         f'{settings.text_fields!r}.')
    if settings.source == GLUE_TSV:
        texts, labels = read_glue_tsv(os.path.join(settings.tsv_dir, f'{split}.tsv'), fields,
                                      settings.label_field)
        names = ()
    else:
        if len(fields) != 1:
            raise ValueError('TFDS text sources have one text field; pairs need task.source='
                             f'{GLUE_TSV!r}.')
        texts, labels, names = _read_tfds(config, split, fields[0], settings.label_field)
    if settings.label_names:
        names = tuple(n.strip() for n in settings.label_names.split(','))
    return texts, labels, names


def vocab_config(config) -> ml_collections.ConfigDict:
    """``data.vocab``, or with ``task.vocab_words`` a word-level vocabulary of the commonest
    words of the training split, laid out on the model's special ids (written once, reused)."""
    n = config.task.vocab_words
    if not n:
        return config.data.vocab
    from xfm_jax.data import vocab as vocab_lib
    vocab = ml_collections.ConfigDict(config.data.vocab.to_dict())
    layout = '_'.join(str(vocab[k]) for k in ('vocab_size', 'pad_id', 'cls_id', 'sep_id',
                                              'mask_id'))
    name = os.path.basename(config.task.tsv_dir.rstrip('/')) or config.task.source
    vocab.update(kind='wordpiece', path=os.path.join(
        config.data.tfds_data_dir, f'xfm_vocab_{name}_{n}words_{layout}.txt'))
    if not os.path.exists(vocab.path):
        texts, _, _ = read_texts(config, config.task.train_split)
        counts = collections.Counter(word for row in _clean([t for ts in texts for t in ts])
                                     for word in row.split())
        vocab_lib.synthetic_vocab_file(
            [w for w, _ in counts.most_common(n)], vocab.path, vocab_size=vocab.vocab_size,
            pad_id=vocab.pad_id, cls_id=vocab.cls_id, sep_id=vocab.sep_id, mask_id=vocab.mask_id)
    return vocab


def _clean(texts: list[str]) -> list[str]:
    import tensorflow as tf
    from xfm_jax.data import text_ops
    cleaned = text_ops.clean_caption(tf.constant(texts, tf.string), max_words=10_000)
    return [t.decode('utf-8') for t in cleaned.numpy()]


def encode(tokenizer, texts, length: int, double_separator: bool) -> np.ndarray:
    """[N] tuples of one or two texts -> int32 [N, length]: ``cls a sep`` or
    ``cls a sep [sep] b sep`` (the first text is truncated first when a pair is too long)."""
    first = tokenizer([t[0] for t in texts])
    if len(texts[0]) == 1:
        return first
    second = tokenizer([t[1] for t in texts])
    pad, sep = tokenizer.specials.pad, tokenizer.specials.sep
    out = np.full((len(texts), length), pad, np.int32)
    middle = [sep] if double_separator else []
    for i, (a, b) in enumerate(zip(first, second)):
        a, b = a[a != pad][:-1], b[b != pad][1:]  # cls + a's tokens; b's tokens + sep
        tail = np.concatenate([[sep], middle, b])
        room = max(1, length - len(tail))  # a keeps at least its cls
        row = np.concatenate([a[:room], tail])[:length]
        row[-1] = sep  # a truncated b still ends with sep
        out[i, :len(row)] = row
    return out


def read(config, split: str, max_examples: int) -> common.Examples:
    settings = config.task
    texts, labels, names = read_texts(config, split)
    if max_examples:
        texts, labels = texts[:max_examples], labels[:max_examples]
    if not texts:
        raise ValueError(f'task split {split!r} has no labelled examples.')
    vocab = vocab_config(config)
    from xfm_jax.evaluators import data as eval_data
    tokenizer = eval_data.Tokenizer(vocab, settings.text_len)
    ids = encode(tokenizer, texts, settings.text_len,
                 double_separator=config.model.text.variant == 'roberta')
    rows = {'input_ids': ids, 'attention_mask': tokenizer.mask(ids)}
    if settings.regression:
        rows['target'] = np.asarray([float(v) for v in labels], np.float32)
        names = ()
    else:
        if not names:
            raise ValueError('task.label_names is needed to map the labels of '
                             f'{settings.source!r} to classes (e.g. "0,1" for SST-2).')
        rows['label'] = np.asarray([_class_index(v, names) for v in labels], np.int32)
    return common.Examples(rows=rows, label_names=names)


def _class_index(value, names: tuple[str, ...]) -> int:
    if isinstance(value, (bytes, str)):
        text = value.decode() if isinstance(value, bytes) else value
        if text not in names:
            raise ValueError(f'Label {text!r} is not in task.label_names {names}.')
        return names.index(text)
    return int(value)  # a TFDS ClassLabel index
