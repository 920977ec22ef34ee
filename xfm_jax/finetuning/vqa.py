"""VQA as classification over an answer vocabulary (X-VLM style): the question through the
language encoder, fused with the image, an MLP head on the fusion [CLS] -> one logit per answer.

Data (``config.task``): ``source`` an image-text source with question-answer pairs (synthetic
scenes: 13 answers over counts, colours and shapes; ``easy_vqa``: 13 answers); ``num_answers``:
the commonest training answers form the vocabulary (0: all). Training questions whose answer is
outside it are dropped; evaluation questions keep credit 0 (always wrong), as VQA scores them.
Metrics: ``accuracy`` (one-hot credit via ``evaluators.metrics.ranked_answer_accuracy``) and
``chance/accuracy`` (always the commonest training answer).
"""

from __future__ import annotations

import collections

import flax.linen as nn
import numpy as np

from xfm_jax.evaluators import metrics
from xfm_jax.finetuning import common
from xfm_jax.models import heads
from xfm_jax.models.model import VisionLanguageModel


class VqaClassifier(nn.Module):
    """(image, question) -> fusion [CLS] -> MLP -> [B, num_answers] logits."""
    model: VisionLanguageModel
    num_answers: int

    def setup(self):
        self.head = heads.MLPHead(self.num_answers, self.model.text.dtype,
                                  self.model.text.param_dtype)

    def __call__(self, batch, *, train: bool = False):
        mask = batch['attention_mask']
        hidden = self.model.encode_text(batch['input_ids'], mask, train=train)
        image_tokens = self.model.encode_image(batch['image'], train=train)
        return self.head(self.model.fuse(hidden, mask, image_tokens, train=train))

    def loss(self, batch, *, train: bool = True):
        return common.classification_loss(self(batch, train=train), batch['label'])


def build(config, model: VisionLanguageModel, train_set: common.Examples, *,
          batch_shards: int) -> VqaClassifier:
    del config, batch_shards
    return VqaClassifier(model, len(train_set.label_names))


def evaluate(run, eval_set: common.Examples, train_set: common.Examples) -> dict[str, float]:
    logits = run.predict(eval_set, 'vqa')
    labels = eval_set.rows['label']
    credit = np.zeros(logits.shape, np.float32)
    known = labels >= 0
    credit[np.flatnonzero(known), labels[known]] = 1.0
    return {'accuracy': metrics.ranked_answer_accuracy(logits, credit),
            'chance/accuracy': common.majority_accuracy(train_set.rows['label'], labels),
            'answers_in_vocabulary': 100.0 * float(known.mean()),
            'num_examples': float(len(labels))}


# ---- reading ----------------------------------------------------------------------------------

def read_questions(config, split: str, max_images: int):
    """(images float32 [M, S, S, 3], image index [Q], questions [Q], answers [Q]) of a split."""
    from xfm_jax.data import image_ops, tasks
    from xfm_jax.evaluators import data as eval_data
    source_name = config.task.source
    all_sources = tasks.sources(config.data)
    if source_name not in all_sources or not all_sources[source_name].qa:
        qa_sources = sorted(n for n, s in all_sources.items() if s.qa)
        raise ValueError(f'task.source {source_name!r} has no question-answer pairs; sources '
                         f'with them: {qa_sources}.')
    builder = tasks.load_builder(all_sources[source_name], config.data.tfds_data_dir)
    if split not in builder.info.splits:
        raise ValueError(f'{builder.name} has no split {split!r}; it has '
                         f'{sorted(builder.info.splits)}.')
    size = config.model.vision.image_size

    def prepare(ex):
        image = image_ops.normalize(image_ops.resize(image_ops.decode_rgb(ex['image']), size))
        return {'image': image, 'question': ex['qa']['question'], 'answer': ex['qa']['answer']}

    ds = eval_data.ordered_split(builder, split, max_images, prepare)
    images, image_index, questions, answers = [], [], [], []
    for i, ex in enumerate(ds.as_numpy_iterator()):
        images.append(ex['image'])
        image_index += [i] * len(ex['question'])
        questions += [q.decode('utf-8') for q in ex['question']]
        answers += [a.decode('utf-8').strip().lower() for a in ex['answer']]
    if not questions:
        raise ValueError(f'{builder.name} split {split!r} has no questions.')
    return (np.stack(images).astype(np.float32), np.asarray(image_index, np.int32), questions,
            answers)


def answer_vocabulary(config) -> tuple[str, ...]:
    """The ``task.num_answers`` commonest answers of the training split (ties by name)."""
    _, _, _, answers = read_questions(config, config.task.train_split, config.task.max_train)
    ranked = sorted(collections.Counter(answers).items(), key=lambda kv: (-kv[1], kv[0]))
    keep = config.task.num_answers or len(ranked)
    return tuple(answer for answer, _ in ranked[:keep])


def read(config, split: str, max_examples: int) -> common.Examples:
    """``max_examples`` counts images here (all questions of each image are kept)."""
    images, image_index, questions, answers = read_questions(config, split, max_examples)
    vocabulary = answer_vocabulary(config)
    labels = np.asarray([vocabulary.index(a) if a in vocabulary else -1 for a in answers],
                        np.int32)
    if split == config.task.train_split:  # the head cannot learn answers it has no logit for
        keep = labels >= 0
        image_index, labels = image_index[keep], labels[keep]
        questions = [q for q, k in zip(questions, keep) if k]
    tokenizer = common.tokenizer(config)
    ids = tokenizer(questions)
    return common.Examples(
        rows={'image_index': image_index, 'input_ids': ids,
              'attention_mask': tokenizer.mask(ids), 'label': labels},
        images=images, label_names=vocabulary)
