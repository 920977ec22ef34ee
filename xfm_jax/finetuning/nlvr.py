"""NLVR2-style reasoning (docs/design.md §12): is one statement true of a PAIR of images? Each
image is fused with the statement separately; the two fusion [CLS] outputs are concatenated
[B, 2D] -> MLP -> 2 classes (false, true).

Data (``config.task.source``), either of:

* a user ``nlvr2`` source (``data.user_sources``, builders/user.py: NLVR2's JSON(L) and image
  files): its statements, images and labels as they are; ``max_examples`` counts statements.
* an image-text source whose first caption lists the objects of its image joined by ' and '
  (synthetic scenes: "a large red circle and a small blue square"; easy-VQA: "a blue circle"),
  from which pairs are made: pair i takes an image A and a different image B in a random order
  and one object X of A; the statement "the {left|right} image shows X" is about A's side or B's
  side with equal probability, and true when the image on that side has X (B rarely does).
  ``task.pairs_per_image`` pairs per image, drawn from ``np.random.default_rng((seed, split))``:
  identical on every machine; ``max_examples`` counts images.

Metrics: ``accuracy``, ``chance/accuracy`` (the commonest training label).
"""

from __future__ import annotations

import zlib

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from xfm_jax.finetuning import common
from xfm_jax.models import heads
from xfm_jax.models.model import VisionLanguageModel

LABELS = ('false', 'true')


class PairClassifier(nn.Module):
    """(left image, right image, text) -> [B, 2] logits."""
    model: VisionLanguageModel

    def setup(self):
        self.head = heads.MLPHead(len(LABELS), self.model.text.dtype, self.model.text.param_dtype)

    def __call__(self, batch, *, train: bool = False):
        mask = batch['attention_mask']
        batch_size = mask.shape[0]
        hidden = self.model.encode_text(batch['input_ids'], mask, train=train)
        # Both images in one vision pass; the text is fused with each separately.
        tokens = self.model.encode_image(
            jnp.concatenate([batch['left_image'], batch['right_image']]), train=train)
        fused = self.model.fuse(jnp.concatenate([hidden, hidden]), jnp.concatenate([mask, mask]),
                                tokens, train=train)[:, 0]
        pair = jnp.concatenate([fused[:batch_size], fused[batch_size:]], axis=-1)  # [B, 2D]
        return self.head(pair[:, None])

    def loss(self, batch, *, train: bool = True):
        return common.classification_loss(self(batch, train=train), batch['label'])


def build(config, model: VisionLanguageModel, train_set: common.Examples, *,
          batch_shards: int) -> PairClassifier:
    del config, train_set, batch_shards
    return PairClassifier(model)


def evaluate(run, eval_set: common.Examples, train_set: common.Examples) -> dict[str, float]:
    return common.score_classifier(run.predict(eval_set, 'nlvr'), eval_set.rows['label'],
                                   train_set.rows['label'])


def make_pairs(objects: list[list[str]], num_pairs: int, rng: np.random.Generator):
    """Statements about image pairs.

    Args:
      objects: per image, the phrases of its objects ("a small red circle").
    Returns:
      (left [P] int, right [P] int, statements [P] str, labels [P] int: 1 = true).
    """
    if len(objects) < 2:
        raise ValueError('NLVR pairs need at least two images.')
    left, right, statements, labels = [], [], [], []
    for _ in range(num_pairs):
        a, b = rng.choice(len(objects), 2, replace=False)
        thing = objects[a][rng.integers(len(objects[a]))]
        pair = (a, b) if rng.random() < 0.5 else (b, a)
        side = int(rng.integers(2))  # 0: the statement is about the left image
        statements.append(f"the {('left', 'right')[side]} image shows {thing}")
        labels.append(int(thing in objects[pair[side]]))
        left.append(pair[0])
        right.append(pair[1])
    return (np.asarray(left, np.int32), np.asarray(right, np.int32), statements,
            np.asarray(labels, np.int32))


def read(config, split: str, max_examples: int) -> common.Examples:
    """A user NLVR2 source's statements, or pairs made from an image-text source (module
    docstring)."""
    from xfm_jax.data import tasks
    source = tasks.sources(config.data).get(config.task.source)
    if source is not None and source.schema == 'image_pair':
        return read_pairs(config, source, split, max_examples)
    return make_examples(config, split, max_examples)


def read_pairs(config, source, split: str, max_examples: int) -> common.Examples:
    """The first ``max_examples`` (0: all) statements of an image-pair source's split, in stored
    order; an image shared by several statements (same key) is one row of the image table, read
    from disk when a batch needs it (``evaluators.data.ImageTable``)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from xfm_jax.data import tasks
    from xfm_jax.evaluators import data as eval_data
    builder = tasks.load_builder(source, config.data.tfds_data_dir)
    size = config.model.vision.image_size
    sides = ('left', 'right')
    skip = tfds.decode.SkipDecoding()  # decoded by the image table, per batch
    records = tasks.open_records(builder, split, {f'{side}_image': skip for side in sides})
    texts = tasks.ordered(records, max_examples).map(
        lambda ex: {'sentence': ex['sentence'], 'label': ex['label'],
                    **{f'{side}_key': ex[f'{side}_key'] for side in sides}})
    image_index, image_rows, image_sides = {}, [], []
    index = {side: [] for side in sides}
    statements, labels = [], []
    for record, ex in enumerate(texts.as_numpy_iterator()):
        for number, side in enumerate(sides):
            key = ex[f'{side}_key'].decode('utf-8')
            if key not in image_index:
                image_index[key] = len(image_rows)
                image_rows.append(record)
                image_sides.append(number)
            index[side].append(image_index[key])
        statements.append(ex['sentence'].decode('utf-8'))
        labels.append(ex['label'])
    if not statements:
        raise ValueError(f'{builder.name} split {split!r} has no statements.')
    tokenizer = common.tokenizer(config)
    ids = tokenizer(statements)
    return common.Examples(
        rows={'left_index': np.asarray(index['left'], np.int32),
              'right_index': np.asarray(index['right'], np.int32), 'input_ids': ids,
              'attention_mask': tokenizer.mask(ids), 'label': np.asarray(labels, np.int32)},
        images=eval_data.ImageTable(
            records, lambda ex, side: eval_data.resized_image(
                tf.where(side == 0, ex['left_image'], ex['right_image']), size),
            (size, size, 3), rows=image_rows, variants=image_sides),
        label_names=LABELS)


def make_examples(config, split: str, max_examples: int) -> common.Examples:
    """Pairs made from an image-text source; ``max_examples`` counts images, pairs are
    ``task.pairs_per_image`` times as many."""
    images = common.read_image_set(config, config.task.source, split, max_examples)
    first = {}
    for caption, image in zip(images.captions, images.caption_image):
        first.setdefault(int(image), caption)
    usable = sorted(first)
    if len(usable) < 2:
        raise ValueError(f'task.source {config.task.source!r} split {split!r} has fewer than two '
                         'captioned images.')
    objects = [first[i].split(' and ') for i in usable]
    rng = np.random.default_rng((config.train.seed, zlib.crc32(split.encode())))
    left, right, statements, labels = make_pairs(
        objects, config.task.pairs_per_image * len(usable), rng)
    tokenizer = common.tokenizer(config)
    ids = tokenizer(statements)
    index = np.asarray(usable, np.int32)
    return common.Examples(
        rows={'left_index': index[left], 'right_index': index[right], 'input_ids': ids,
              'attention_mask': tokenizer.mask(ids), 'label': labels},
        images=images.images, label_names=LABELS)
