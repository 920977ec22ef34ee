"""VQA, two ways (``config.task.head``), both reading the question through the language encoder
and fusing it with the image:

``'classifier'`` (X-VLM's classification): an MLP on the fusion [CLS] -> one logit per answer.
``'generative'`` (X-FM / ALBEF): an answer decoder (``models.decoder.AnswerDecoder``: causal
self-attention over the answer, cross-attention to the fused question states, the LM head),
initialised from the pre-trained fusion encoder and its MLM head (:func:`params_from_backbone`)
and trained with the answer's negative log-likelihood (teacher forcing). At evaluation every
candidate of the answer vocabulary is scored by its log-likelihood (``task.rank_k`` = 0: all of
them in full; k > 0: ALBEF's preselection of the k likeliest first tokens, the rest -inf).

Data (``config.task``): ``source`` an image-text source with question-answer pairs (synthetic
scenes: 13 answers over counts, colours and shapes; ``easy_vqa``: 13 answers); ``num_answers``:
the commonest training answers form the vocabulary (0: all) -- the classifier's outputs, the
decoder's candidates. The classifier drops training questions whose answer is outside it (the
decoder learns them); evaluation questions keep credit 0 (always wrong), as VQA scores them.
Metrics: ``accuracy`` (one-hot credit via ``evaluators.metrics.ranked_answer_accuracy``) and
``chance/accuracy`` (always the commonest training answer). With a workdir, a gallery PNG
(``task.gallery_questions``): image, question, the top answers with their probability, green
when right, and the true answer.
"""

from __future__ import annotations

import collections
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xfm_jax.evaluators import data as eval_data, gallery, metrics
from xfm_jax.finetuning import common
from xfm_jax.models import decoder, heads
from xfm_jax.models.model import VisionLanguageModel

HEADS = ('classifier', 'generative')


def encode_question(model: VisionLanguageModel, batch, *, train: bool):
    """(fused question-image states [B, L, Dt], question mask [B, L])."""
    mask = jnp.asarray(batch['attention_mask'])  # may be numpy (init's sample), indexed by tracers
    hidden = model.encode_text(batch['input_ids'], mask, train=train)
    image_tokens = model.encode_image(batch['image'], train=train)
    return model.fuse(hidden, mask, image_tokens, train=train), mask


class VqaClassifier(nn.Module):
    """(image, question) -> fusion [CLS] -> MLP -> [B, num_answers] logits."""
    model: VisionLanguageModel
    num_answers: int

    def setup(self):
        self.head = heads.MLPHead(self.num_answers, self.model.text.dtype,
                                  self.model.text.param_dtype)

    def __call__(self, batch, *, train: bool = False):
        return self.head(encode_question(self.model, batch, train=train)[0])

    def loss(self, batch, *, train: bool = True):
        return common.classification_loss(self(batch, train=train), batch['label'])


class VqaGenerator(nn.Module):
    """(image, question) -> fused states -> answer decoder. ``__call__`` -> [B, A] log-likelihood
    of every candidate answer; ``loss``: mean answer NLL over the batch (summed over its tokens)."""
    model: VisionLanguageModel
    candidates: tuple[tuple[int, ...], ...]  # [A, La] answer ids: cls answer sep pad...
    rank_k: int = 0

    def setup(self):
        self.decoder = decoder.AnswerDecoder(self.model.fusion)

    def _question(self, batch, train):
        fused, mask = encode_question(self.model, batch, train=train)
        if self.is_initializing():  # creates the backbone's MLM head, restored with the backbone:
            self.model.fusion_mlm_logits(fused[:, :1])  # params_from_backbone copies it
        return fused, mask

    def _answer_mask(self, ids):
        return (ids != self.model.text.pad_id).astype(jnp.int32)

    def __call__(self, batch, *, train: bool = False):
        fused, mask = self._question(batch, train)
        ids = jnp.asarray(self.candidates, jnp.int32)

        def log_probs(question, answer_ids, answer_mask):
            return jax.nn.log_softmax(self.decoder(answer_ids, answer_mask, fused[question],
                                                   mask[question], train=train))
        return decoder.rank_answers(log_probs, fused.shape[0], ids, self._answer_mask(ids),
                                    self.rank_k)

    def loss(self, batch, *, train: bool = True):
        fused, mask = self._question(batch, train)
        ids = batch['answer_ids']
        answer_mask = self._answer_mask(ids)
        log_probs = jax.nn.log_softmax(self.decoder(ids, answer_mask, fused, mask, train=train))
        nll = -decoder.sequence_log_likelihood(log_probs, ids, answer_mask)
        tokens = answer_mask[:, 1:]
        right = (jnp.argmax(log_probs[:, :-1], axis=-1) == ids[:, 1:]) * tokens
        return nll.mean(), {
            'token_accuracy': right.sum() / jnp.maximum(tokens.sum(), 1),
            'answer_accuracy': jnp.mean(jnp.all(right == tokens, axis=1))}  # teacher-forced


def build(config, model: VisionLanguageModel, train_set: common.Examples, *,
          batch_shards: int) -> nn.Module:
    del batch_shards
    head = config.task.head
    if head not in HEADS:
        raise ValueError(f'config.task.head must be one of {HEADS}, got {head!r}.')
    if head == 'classifier':
        return VqaClassifier(model, len(train_set.label_names))
    candidates = tokenize_answers(config, train_set.label_names)
    return VqaGenerator(model, tuple(map(tuple, candidates.tolist())), config.task.rank_k)


def params_from_backbone(config, params) -> dict:
    """The task params that start as a copy of the (restored) backbone: the generative head's
    ``decoder`` (``decoder.params_from_model``); none for the classifier (a fresh MLP)."""
    if config.task.head != 'generative':
        return {}
    return {'decoder': decoder.params_from_model(params['model'],
                                                 config.model.fusion.own_mlm_head)}


def evaluate(run, eval_set: common.Examples, train_set: common.Examples) -> dict[str, float]:
    scores = run.predict(eval_set, 'vqa')
    labels = eval_set.rows['label']
    known = labels >= 0
    # VQA v2 style sources: soft credit from the annotators' answers; else one-hot on the answer.
    credit = eval_set.targets.get('answer_credit')
    if credit is None:
        credit = np.zeros(scores.shape, np.float32)
        credit[np.flatnonzero(known), labels[known]] = 1.0
    settings = run.config.task
    if run.workdir and settings.gallery_questions:
        # Classifier: softmax over the answers; decoder: each answer's sequence probability.
        probabilities = (np.exp(scores) if settings.head == 'generative'
                         else jax.nn.softmax(scores, axis=-1))
        path = os.path.join(run.workdir, f'vqa_gallery_step{run.step}.png')
        run.images['vqa_gallery'] = draw_gallery(path, eval_set, np.asarray(probabilities),
                                                 settings.gallery_questions)
    return {'accuracy': metrics.ranked_answer_accuracy(scores, credit),
            'chance/accuracy': common.majority_accuracy(train_set.rows['label'], labels),
            'answers_in_vocabulary': 100.0 * float(known.mean()),
            'num_examples': float(len(labels))}


def draw_gallery(path: str, examples: common.Examples, probabilities: np.ndarray,
                 num_questions: int, top: int = 3) -> np.ndarray:
    """One row per question (``num_questions`` spread over the set): the image, the question,
    the ``top`` answers with their probability (green: the true answer, red: wrong), the truth.
    Returns the PNG's pixels."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    rows = []
    for q in np.unique(np.linspace(0, len(examples) - 1, num_questions).astype(int)):
        truth = examples.display['answer'][q]
        pixels = gallery.to_uint8(examples.images[examples.rows['image_index'][q]])
        row = [gallery.Thumb(pixels),
               gallery.Text(examples.display['question'][q], width=30)]
        for rank, a in enumerate(np.argsort(-probabilities[q], kind='stable')[:top]):
            name = examples.label_names[a]
            row.append(gallery.Text(f'{rank + 1}. {name}\np={probabilities[q, a]:.3g}',
                                    'green' if name == truth else 'red', width=14))
        row.append(gallery.Text(f'true: {truth}', 'blue', width=18))
        rows.append(row)
    return gallery.draw(path, rows)


# ---- reading ----------------------------------------------------------------------------------

def read_questions(config, split: str, max_images: int, *, human_answers: bool = False):
    """(images: ImageTable [M, S, S, 3], image index [Q], questions [Q], answers [Q]) of a split.

    ``human_answers``: also return, 5th, every question's annotator answers (VQA v2: ten,
    cleaned like ``answers``), or None when the source stores only one answer per question."""
    from xfm_jax.data import tasks
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

    with_human = human_answers and 'answers' in builder.info.features['qa']

    def prepare(ex):
        out = {'question': ex['qa']['question'], 'answer': ex['qa']['answer']}
        if with_human:  # ragged [questions, answers] -> flat values + per-question counts
            out['human'] = ex['qa']['answers'].flat_values
            out['human_counts'] = ex['qa']['answers'].row_lengths()
        return out

    records, ds = eval_data.ordered_split(builder, split, max_images, prepare)
    image_index, questions, answers, humans = [], [], [], []
    num_images = 0
    for i, ex in enumerate(ds.as_numpy_iterator()):
        num_images += 1
        image_index += [i] * len(ex['question'])
        questions += [q.decode('utf-8') for q in ex['question']]
        answers += [a.decode('utf-8').strip().lower() for a in ex['answer']]
        if with_human:
            per_question = np.split(ex['human'], np.cumsum(ex['human_counts'])[:-1])
            humans += [[a.decode('utf-8').strip().lower() for a in group]
                       for group in per_question]
    if not questions:
        raise ValueError(f'{builder.name} split {split!r} has no questions.')
    images = eval_data.ImageTable(
        records, lambda ex, _: eval_data.resized_image(ex['image'], size), (size, size, 3),
        rows=np.arange(num_images))
    out = (images, np.asarray(image_index, np.int32), questions, answers)
    if human_answers:
        return out + (humans if with_human else None,)
    return out


def soft_credit(human_answers: list[list[str]], vocabulary: tuple[str, ...]) -> np.ndarray:
    """VQA's score of each candidate answer: min(1, annotators who gave it / 3), [Q, A] float32
    (the common form of the official metric, which averages this over the 10 leave-one-out
    subsets of annotators)."""
    column = {answer: a for a, answer in enumerate(vocabulary)}
    credit = np.zeros((len(human_answers), len(vocabulary)), np.float32)
    for q, given in enumerate(human_answers):
        for answer, count in collections.Counter(given).items():
            if answer in column:
                credit[q, column[answer]] = min(1.0, count / 3.0)
    return credit


def answer_vocabulary(config) -> tuple[str, ...]:
    """The ``task.num_answers`` commonest answers of the training split (ties by name)."""
    _, _, _, answers = read_questions(config, config.task.train_split, config.task.max_train)
    ranked = sorted(collections.Counter(answers).items(), key=lambda kv: (-kv[1], kv[0]))
    keep = config.task.num_answers or len(ranked)
    return tuple(answer for answer, _ in ranked[:keep])


def tokenize_answers(config, answers) -> np.ndarray:
    """``cls answer sep`` ids [A, task.answer_len]; an answer too long to end in padding (it
    would be cut, and may collide with another) is an error."""
    tokenizer = eval_data.Tokenizer(config.data.vocab, config.task.answer_len)
    ids = tokenizer(list(answers))
    cut = [a for a, row in zip(answers, ids) if row[-1] != tokenizer.specials.pad]
    if cut:
        raise ValueError(f'{len(cut)} answers do not fit task.answer_len='
                         f'{config.task.answer_len} tokens with padding after them (e.g. '
                         f'{cut[:3]}); raise it.')
    return ids


def read(config, split: str, max_examples: int) -> common.Examples:
    """``max_examples`` counts images here (all questions of each image are kept)."""
    images, image_index, questions, answers, humans = read_questions(
        config, split, max_examples, human_answers=True)
    vocabulary = answer_vocabulary(config)
    labels = np.asarray([vocabulary.index(a) if a in vocabulary else -1 for a in answers],
                        np.int32)
    generative = config.task.head == 'generative'
    if split == config.task.train_split and not generative:
        keep = labels >= 0  # the classifier cannot learn answers it has no logit for
        image_index, labels = image_index[keep], labels[keep]
        questions = [q for q, k in zip(questions, keep) if k]
        answers = [a for a, k in zip(answers, keep) if k]
        humans = None  # training uses the majority answer only
    tokenizer = common.tokenizer(config)
    ids = tokenizer(questions)
    rows = {'image_index': image_index, 'input_ids': ids, 'attention_mask': tokenizer.mask(ids),
            'label': labels}
    if generative:
        rows['answer_ids'] = tokenize_answers(config, answers)
    targets = {'answer_credit': soft_credit(humans, vocabulary)} if humans else {}
    return common.Examples(rows=rows, images=images, label_names=vocabulary,
                           display={'question': tuple(questions), 'answer': tuple(answers)},
                           targets=targets)
