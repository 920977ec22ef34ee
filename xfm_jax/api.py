"""Trained models from Python: :func:`load` a checkpoint, then score images against texts.

    import xfm_jax
    model = xfm_jax.load('/tmp/xfm_runlocal')        # a workdir, a step, a convert/finetune output
    pixels = model.preprocess(['cat.jpg'])            # paths (local or gs://), PIL images, arrays
    model.itc_scores(pixels, ['a cat', 'a dog', 'a car'])   # [1, 3] cosine similarities

Everything comes from the checkpoint: the model (``model_config.json`` or the run config a
training step stores), its parameters and its vocabulary (``xfm_jax.checkpoint``). Images go
through the evaluators' transform (``evaluators.data.resized_image``: the whole image resized
bicubic to the model's resolution, CLIP-normalised), reproduced here in numpy; texts through
the evaluators' tokeniser (``evaluators.data.Tokenizer``, TensorFlow / seqio). The model calls
are the evaluators' own jitted functions (``evaluators.batching``), run over the local devices
with the batch split over them (parameters replicated). Batches are padded to a power of two
(at least one row per device, at most ``batch_size``), so repeated calls of any size reuse a
handful of compiled shapes.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
from collections.abc import Sequence
from typing import Any

import flax.linen
import jax
import ml_collections
import numpy as np

from xfm_jax import checkpoint, partitioning, paths, streams
from xfm_jax.evaluators import batching
from xfm_jax.models.model import VisionLanguageModel, build_model

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.gif', '.bmp', '.webp', '.tif', '.tiff')
DEFAULT_TEXT_LEN = 40  # caption length of the papers' retrieval, for checkpoints stating none
# The tokenizer files a converted checkpoint may have beside it -> data.vocab kind.
_VOCAB_FILES = {'vocab.txt': 'wordpiece', 'vocab.json': 'bpe', 'spiece.model': 'sentencepiece'}

Images = Any  # one image or a sequence of them (see Model.preprocess), or preprocess's output
Texts = str | Sequence[str]


# ---- images: the evaluation transform in numpy -------------------------------------------------

def read_image(image) -> np.ndarray:
    """One image -> [H, W, 3] pixels in [0, 255] (uint8, or float32 for float input).

    ``image``: a path (local or ``gs://``), a PIL image (grey, palette and alpha images become
    RGB, alpha dropped, as ``tf.io.decode_image(channels=3)`` does), or an array [H, W],
    [H, W, 3] or [H, W, 4]: uint8 in [0, 255] or float in [0, 1].
    """
    from PIL import Image
    if isinstance(image, (str, os.PathLike)):
        path = paths.resolve(image)
        if not path.exists():
            raise FileNotFoundError(f'{path}: no such image file.')
        try:
            image = Image.open(io.BytesIO(path.read_bytes()))
            image.load()
        except Exception as e:  # PIL names no path
            raise ValueError(f'{path}: not a readable image ({type(e).__name__}: {e}).') from e
    if isinstance(image, Image.Image):
        return np.asarray(image.convert('RGB'))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f'an image array must be [H, W], [H, W, 3] or [H, W, 4], got '
                         f'{array.shape}.')
    array = array[..., :3]
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(f'a float image must hold values in [0, 1] (got [{array.min():g}, '
                             f'{array.max():g}]); pass uint8 for values in [0, 255].')
        return (array * 255).astype(np.float32)
    raise ValueError(f'an image array must be uint8 or float, got {array.dtype}.')


@functools.lru_cache(maxsize=None)
def _bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] weights of TensorFlow's bicubic resize (``tf.image.resize``,
    method='bicubic', no antialiasing = ``resize_bicubic`` with half-pixel centres): Keys' cubic
    (a = -0.5) sampled at 1/1024 steps of the offset, taps outside the image dropped and the
    rest renormalised. Float32 arithmetic as TensorFlow's kernel, so the positions agree."""
    a, steps = np.float32(-0.5), 1024
    x = np.arange(steps + 1, dtype=np.float32) / np.float32(steps)
    near = ((a + 2) * x - (a + 3)) * x * x + 1  # |t| <= 1
    far = ((a * (x + 1) - 5 * a) * (x + 1) + 8 * a) * (x + 1) - 4 * a  # 1 < |t| <= 2
    scale = np.float32(in_size) / np.float32(out_size)
    centre = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    base = np.floor(centre).astype(np.int64)
    offset = np.rint((centre - base.astype(np.float32)) * np.float32(steps)).astype(np.int64)
    taps = base[:, None] + np.arange(-1, 3)  # [out, 4]
    weights = np.stack([far[offset], near[offset], near[steps - offset], far[steps - offset]],
                       axis=1).astype(np.float64)
    weights[(taps < 0) | (taps >= in_size)] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    matrix = np.zeros((out_size, in_size))
    np.add.at(matrix, (np.repeat(np.arange(out_size), 4), np.clip(taps, 0, in_size - 1).ravel()),
              weights.ravel())
    return matrix


def eval_transform(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """[H, W, 3] pixels in [0, 255] -> float32 [S, S, 3]: resized whole (bicubic, clipped to
    [0, 255]) and CLIP-normalised, as ``evaluators.data.resized_image`` does in TensorFlow."""
    from xfm_jax.data import PIXEL_OFFSET, PIXEL_SCALE  # TF-free
    height, width = pixels.shape[:2]
    # optimize=True contracts one axis at a time (two matrix products); the default order
    # loops over all five indices at once: seconds for 64 px, minutes for a photo.
    resized = np.einsum('yh,hwc,xw->yxc', _bicubic_matrix(height, image_size),
                        pixels.astype(np.float64), _bicubic_matrix(width, image_size),
                        optimize=True)
    resized = np.clip(resized, 0.0, 255.0).astype(np.float32)
    return (resized * np.asarray(PIXEL_SCALE, np.float32)
            + np.asarray(PIXEL_OFFSET, np.float32))


def image_files(pattern: paths.PathLike) -> list:
    """The images of a directory (files with an image suffix, sorted) or of a glob pattern,
    local or ``gs://``."""
    path = paths.resolve(pattern)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                       key=os.fspath)
    else:
        files = paths.glob(pattern)
    if not files:
        raise FileNotFoundError(f'{pattern}: no image files (a directory of '
                                f'{"/".join(IMAGE_SUFFIXES)} files or a glob pattern).')
    return files


# ---- the vocabulary of a checkpoint ------------------------------------------------------------

def _vocab_config(location: checkpoint.Location, stored: ml_collections.ConfigDict | None,
                  text: ml_collections.ConfigDict, vocab) -> ml_collections.ConfigDict:
    """The ``data.vocab`` config to tokenise with: ``vocab`` when given (a data.vocab dict; a
    vocab.txt (WordPiece), vocab.json (BPE, merges.txt beside it) or .model (SentencePiece)
    file; or 'synthetic': the synthetic grammar's vocabulary on the model's ids), else the one
    the checkpoint stores, else tokenizer files beside a converted checkpoint."""
    ids = {k: text[k] for k in ('vocab_size', 'pad_id', 'cls_id', 'sep_id', 'mask_id')}
    if vocab is None:
        if stored is not None and 'data' in stored and 'vocab' in stored.data:
            return stored.data.vocab
        beside = [location.tree.parent / name for name in _VOCAB_FILES
                  if (location.tree.parent / name).exists()]
        if not beside:
            wants = ('a vocab.txt (BERT WordPiece)' if text.variant == 'bert' else
                     'a vocab.json with merges.txt beside it (RoBERTa BPE)')
            raise ValueError(
                f'{location.tree.parent} states no vocabulary (a converted checkpoint: '
                f'model_config.json has no data.vocab, and no {"/".join(_VOCAB_FILES)} lies '
                f'beside it); pass vocab= {wants} for model.text.variant {text.variant!r}, a '
                f"data.vocab dict, or 'synthetic' for the synthetic sets' vocabulary.")
        vocab = beside[0]
    if isinstance(vocab, dict | ml_collections.ConfigDict):
        return ml_collections.ConfigDict(dict(vocab))
    if vocab == 'synthetic':
        layout = '_'.join(str(v) for v in ids.values())
        cache = checkpoint.cache_dir('vocab')  # the cache the stored vocabularies go to
        return ml_collections.ConfigDict(dict(
            kind='synthetic', path=os.fspath(cache / f'synthetic_{layout}.txt'),
            merges_path='', **ids))
    path = paths.resolve(vocab)
    kind = {'.txt': 'wordpiece', '.json': 'bpe', '.model': 'sentencepiece'}.get(path.suffix)
    if kind is None or not path.exists():
        raise ValueError(f'vocab={os.fspath(vocab)!r}: expected an existing vocab.txt, vocab.json '
                         f"or .model file, a data.vocab dict, or 'synthetic'.")
    merges = path.parent / 'merges.txt'
    if kind == 'bpe' and not merges.exists():
        raise ValueError(f'vocab={os.fspath(path)}: a BPE vocabulary needs {merges} beside it.')
    return ml_collections.ConfigDict(dict(kind=kind, path=os.fspath(path),
                                          merges_path=os.fspath(merges) if kind == 'bpe' else '',
                                          **ids))


# ---- the model --------------------------------------------------------------------------------

@dataclasses.dataclass
class Model:
    """A checkpoint's model on the local devices. Images (any method's ``images``): one image
    or a list of them as :func:`read_image` takes, or the float32 [N, S, S, 3] output of
    :meth:`preprocess`. Texts: one string or a list."""
    module: VisionLanguageModel
    params: Any
    config: ml_collections.ConfigDict  # the run config; a converted checkpoint: model only
    location: checkpoint.Location
    mesh: jax.sharding.Mesh
    rules: Any
    vocab: ml_collections.ConfigDict  # data.vocab the texts are tokenised with
    text_len: int
    batch_size: int = 64  # most rows per device call

    @property
    def image_size(self) -> int:
        return int(self.module.vision.image_size)

    # ---- inputs ----
    def preprocess(self, images: Images) -> np.ndarray:
        """-> float32 [N, S, S, 3]: each image resized whole to the model's resolution (bicubic)
        and CLIP-normalised, as the evaluators do (:func:`eval_transform`). A float32
        [N, S, S, 3] array is taken as this method's output and returned as it is; another
        [N, H, W, C] array as N images."""
        size = self.image_size
        if isinstance(images, np.ndarray) and images.ndim == 4:
            if images.dtype == np.float32 and images.shape[1:] == (size, size, 3):
                return images
            images = list(images)
        if isinstance(images, (str, os.PathLike, np.ndarray)) or hasattr(images, 'convert'):
            images = [images]
        if not len(images):
            raise ValueError('no images given.')
        return np.stack([eval_transform(read_image(image), size) for image in images])

    @functools.cached_property
    def _tokenizers(self) -> dict:
        return {}

    def tokenize(self, texts: Texts, length: int | None = None) -> np.ndarray:
        """-> int32 [T, length] (default ``text_len``): cleaned and tokenised to
        ``cls tokens sep`` with the checkpoint's vocabulary, as the evaluators do."""
        from xfm_jax.evaluators import data  # TensorFlow: only once texts are tokenised
        length = length or self.text_len
        if length not in self._tokenizers:
            self._tokenizers[length] = data.Tokenizer(self.vocab, length)
        return self._tokenizers[length]([texts] if isinstance(texts, str) else list(texts))

    def _mask(self, ids: np.ndarray) -> np.ndarray:
        return (ids != self.module.text.pad_id).astype(np.int32)

    def _map(self, fn, num_rows: int, rows, name: str, params=None):
        """``batching.map_batches`` in batches of the next power of two of ``num_rows`` (capped
        at ``batch_size``): a few shapes, each compiled once."""
        batch = min(self.batch_size, 1 << max(num_rows - 1, 0).bit_length())
        return batching.map_batches(fn, self.params if params is None else params, num_rows,
                                    rows, batch_size=batch, mesh=self.mesh, rules=self.rules,
                                    name=name)

    def _encode_images(self, images: Images) -> tuple[np.ndarray, np.ndarray]:
        pixels = self.preprocess(images)
        return self._map(batching.image_encoder(self.module), len(pixels),
                         batching.take({'image': pixels}), 'api: images')

    def _encode_texts(self, texts: Texts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids = self.tokenize(texts)
        mask = self._mask(ids)
        embedding, hidden = self._map(batching.text_encoder(self.module), len(ids),
                                      batching.take({'ids': ids, 'mask': mask}), 'api: texts')
        return embedding, hidden, mask

    # ---- scores ----
    def embed_images(self, images: Images) -> np.ndarray:
        """-> float32 [N, E] L2-normalised ITC embeddings."""
        return self._encode_images(images)[0].astype(np.float32)

    def embed_texts(self, texts: Texts) -> np.ndarray:
        """-> float32 [T, E] L2-normalised ITC embeddings."""
        return self._encode_texts(texts)[0].astype(np.float32)

    def itc_scores(self, images: Images, texts: Texts) -> np.ndarray:
        """-> float32 [N, T] cosine similarities of the ITC embeddings (the first stage of
        retrieval)."""
        return self.embed_images(images) @ self.embed_texts(texts).T

    def _fusion(self, image_tokens, hidden, mask, pair_image, pair_text):
        """(ITM match probability [P], box [P, 4]) of the pairs (image i, text t)."""
        return self._map(batching.fusion_heads(self.module), len(pair_image),
                         lambda i: {'text_hidden': hidden[pair_text[i]], 'mask': mask[pair_text[i]],
                                    'image_tokens': image_tokens[pair_image[i]]}, 'api: fusion')

    def itm_scores(self, images: Images, texts: Texts) -> np.ndarray:
        """-> float32 [N, T]: the ITM head's probability that image n and text t match (the
        fusion encoder over every pair; retrieval's re-ranking score)."""
        _, tokens = self._encode_images(images)
        _, hidden, mask = self._encode_texts(texts)
        n, t = len(tokens), len(hidden)
        match, _ = self._fusion(tokens, hidden, mask, np.repeat(np.arange(n), t),
                                np.tile(np.arange(t), n))
        return match.astype(np.float32).reshape(n, t)

    def ground(self, images: Images, phrases: Texts) -> np.ndarray:
        """The box head's box of each phrase in its image -> float32 [4] for one image and one
        phrase, else [N, 4] (pairs image i, phrase i): (x0, y0, x1, y1) as fractions of the
        image's width and height (the head predicts centre and size of the box in the whole
        image; corners outside the image are not clipped)."""
        single = isinstance(phrases, str)
        _, tokens = self._encode_images(images)
        _, hidden, mask = self._encode_texts(phrases)
        if len(tokens) != len(hidden):
            raise ValueError(f'ground: {len(tokens)} images but {len(hidden)} phrases; pass one '
                             'phrase per image.')
        _, box = self._fusion(tokens, hidden, mask, np.arange(len(tokens)), np.arange(len(tokens)))
        centre, size = box[:, :2].astype(np.float32), box[:, 2:].astype(np.float32)
        corners = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        return corners[0] if single else corners

    def classify(self, images: Images, class_names: Sequence[str],
                 template: str = 'a picture of a {}') -> list[str]:
        """Zero-shot: each image's class is the name whose prompt (``template`` of the name,
        '_' read as ' ') has the highest ITC similarity, as the zero_shot_classification
        evaluator scores. Scores: ``itc_scores(images, prompts)``."""
        prompts = [template.format(name.replace('_', ' ')) for name in class_names]
        return [class_names[i] for i in np.argmax(self.itc_scores(images, prompts), axis=1)]

    # ---- visual question answering ----
    @functools.cached_property
    def _vqa(self) -> tuple[Any, int | None, str]:
        """(params {'model', 'decoder'} of the answer decoder, answer length or None, where it
        comes from): a generative VQA fine-tune's decoder, else one started from the fusion
        encoder and its MLM head as generative fine-tuning starts (untrained for answers)."""
        from xfm_jax.models import decoder
        task = self._vqa_task
        if task is not None and task.head != 'generative':
            raise ValueError(f'{self.location.tree}: a VQA fine-tune with the {task.head!r} '
                             'head answers through its classifier, not a decoder.')
        try:
            derived = jax.jit(lambda p: {'decoder': decoder.params_from_model(
                p, bool(self.module.own_fusion_mlm_head))})(self.params)
        except (KeyError, ValueError) as e:
            raise ValueError(f'{self.location.tree}: no VQA head (not a generative VQA '
                             f'fine-tune) and no generative ranking from the fusion encoder: '
                             f'{e}') from e
        params = {'model': self.params, **derived}
        if task is not None and task.get('name') == 'vqa':
            own = checkpoint.restore_task_params(
                self.location, 'vqa',
                jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), derived),
                jax.tree.map(lambda x: x.sharding, derived))
            if own is None:
                raise ValueError(f'{self.location.tree}: a generative VQA fine-tune whose stored '
                                 'decoder does not match this model.')
            return {**params, **own}, int(task.answer_len), 'fine-tuned decoder'
        return params, None, 'decoder started from the fusion encoder (not fine-tuned)'

    @functools.cached_property
    def _vqa_task(self):
        """``config.task`` of a VQA fine-tuning output, else None."""
        task = self.config.get('task') if (self.location.description or {}).get('task') else None
        return task if task is not None and task.get('name') == 'vqa' else None

    @functools.cached_property
    def _vqa_classifier(self) -> tuple[Any, tuple[str, ...]]:
        """(params {'model', 'head'}, answers) of a classifier-head VQA fine-tune: the answers
        are its training data's commonest, stored with it as ``label_names``."""
        from xfm_jax.finetuning import vqa
        answers = tuple((self.location.description or {}).get('label_names') or ())
        if not answers:
            raise ValueError(f'{self.location.tree}: a classifier-head VQA fine-tune that does not '
                             'store its answer list (written before fine-tuning outputs did); '
                             'fine-tune again to answer with it.')
        side = self.image_size
        sample = {'image': np.zeros((1, side, side, 3), np.float32),
                  'input_ids': np.zeros((1, 4), np.int32), 'attention_mask': np.ones((1, 4), bool)}
        abstract = jax.eval_shape(lambda: vqa.VqaClassifier(self.module, len(answers)).init(
            jax.random.key(0), sample))['params']
        own = flax.linen.unbox({k: v for k, v in abstract.items() if k != 'model'})
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        head = checkpoint.restore_task_params(self.location, 'vqa', own,
                                              jax.tree.map(lambda _: replicated, own))
        if head is None:
            raise ValueError(f'{self.location.tree}: the stored VQA classifier does not match '
                             f'{len(answers)} answers on this model.')
        return {'model': self.params, **head}, answers

    @property
    def answers(self) -> tuple[str, ...]:
        """The answers a classifier-head VQA fine-tune chooses from; () for any other model
        (whose :meth:`answer` ranks the candidates it is given)."""
        task = self._vqa_task
        return self._vqa_classifier[1] if task is not None and task.head != 'generative' else ()

    @property
    def answer_decoder(self) -> str:
        """What :meth:`answer_scores` uses: a fine-tuned classifier or decoder, or the decoder
        started from the fusion encoder."""
        task = self._vqa_task
        if task is not None and task.head != 'generative':
            return 'fine-tuned classifier'
        return self._vqa[2]

    def answer_scores(self, images: Images, question: str,
                      candidates: Sequence[str] | None = None) -> np.ndarray:
        """-> float32 [N, A] log-likelihood of each candidate answer to ``question`` about each
        image. A classifier-head VQA fine-tune scores its own answers (log-softmax of its
        logits; ``candidates``, default all of :attr:`answers`, must be among them). Otherwise
        the answer decoder (``finetuning.vqa.VqaGenerator``) scores every candidate in full: a
        generative VQA fine-tune's, or (any other checkpoint) the one generative fine-tuning
        starts from: the fusion encoder and its MLM head, which ranks answers as a language
        model conditioned on the image, never trained to answer."""
        if self.answers:
            return self._classifier_scores(images, question, candidates)
        if not candidates:
            raise ValueError('answer_scores needs candidates: this model has no answer list '
                             '(only a classifier-head VQA fine-tune has one).')
        params, answer_len, _ = self._vqa
        question_len = int(self.config.task.text_len) if answer_len else self.text_len
        pixels = self.preprocess(images)
        ids = self.tokenize([question] * len(pixels), question_len)
        answers = self.tokenize(list(candidates), answer_len or self.text_len)
        pad = self.module.text.pad_id
        if answer_len is None:  # the shortest length (a multiple of 8) ending in padding
            longest = int((answers != pad).sum(axis=1).max())
            answers = answers[:, :min(self.text_len, -(-(longest + 1) // 8) * 8)]
        cut = [c for c, row in zip(candidates, answers) if row[-1] != pad]
        if cut:
            raise ValueError(f'answers {cut[:3]} are longer than the {answers.shape[1]} tokens '
                             'the answer decoder reads.')
        fn = _generator(self.module, tuple(map(tuple, answers.tolist())))
        return self._map(fn, len(pixels), batching.take(
            {'image': pixels, 'input_ids': ids, 'attention_mask': self._mask(ids)}),
            'api: answers', params=params).astype(np.float32)

    def _classifier_scores(self, images, question, candidates):
        params, answers = self._vqa_classifier
        index = {a: i for i, a in enumerate(answers)}
        candidates = list(answers if candidates is None else candidates)
        if unknown := [c for c in candidates if c not in index]:
            raise ValueError(f'{unknown[:3]} are not among the {len(answers)} answers this VQA '
                             f'classifier chooses from (e.g. {list(answers[:5])}; model.answers '
                             'lists them).')
        question_len = int(self._vqa_task.get('text_len', self.text_len))
        pixels = self.preprocess(images)
        ids = self.tokenize([question] * len(pixels), question_len)
        logits = self._map(_classifier(self.module, len(answers)), len(pixels), batching.take(
            {'image': pixels, 'input_ids': ids, 'attention_mask': self._mask(ids)}),
            'api: answers', params=params).astype(np.float32)
        log_probs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        return log_probs[:, [index[c] for c in candidates]]

    def answer(self, image: Images, question: str,
               candidates: Sequence[str] | None = None) -> str:
        """The candidate answer with the highest :meth:`answer_scores` for one image
        (candidates: default, a classifier fine-tune's :attr:`answers`)."""
        scores = self.answer_scores(image, question, candidates)
        if len(scores) != 1:
            raise ValueError(f'answer takes one image, got {len(scores)}; use answer_scores.')
        return list(candidates or self.answers)[int(np.argmax(scores[0]))]


@functools.lru_cache(maxsize=16)
def _classifier(module: VisionLanguageModel, num_answers: int):
    """Jitted (params, batch) -> [B, A] logits of a VQA classifier head."""
    from xfm_jax.finetuning import vqa
    classifier = vqa.VqaClassifier(module, num_answers)
    return jax.jit(lambda params, batch: classifier.apply({'params': params}, batch))


@functools.lru_cache(maxsize=16)
def _generator(module: VisionLanguageModel, candidates: tuple[tuple[int, ...], ...]):
    """Jitted (params, batch) -> [B, A] answer log-likelihoods, one per candidate list."""
    from xfm_jax.finetuning import vqa
    generator = vqa.VqaGenerator(module, candidates)
    return jax.jit(lambda params, batch: generator.apply({'params': params}, batch))


def load(path: paths.PathLike, *, devices: Sequence[jax.Device] | None = None, vocab=None,
         batch_size: int = 64) -> Model:
    """The model of the checkpoint at ``path``: a training workdir (its newest step), a step
    directory, or an output of ``xfm_jax.convert`` / ``xfm_jax.finetune``; local or ``gs://``.

    Args:
      devices: where the parameters go (replicated) and the batches are split (default: the
        local devices).
      vocab: the vocabulary, for checkpoints that store none (``xfm_jax.convert`` outputs): a
        vocab.txt (WordPiece), a vocab.json with merges.txt beside it (BPE), a SentencePiece
        .model, a ``data.vocab`` dict, or 'synthetic' (the synthetic sets' vocabulary on the
        model's ids). Default: the checkpoint's own, else tokenizer files beside it.
      batch_size: most rows per device call.
    Raises FileNotFoundError when ``path`` holds no checkpoint, ValueError naming what the
    checkpoint lacks (a model config, a vocabulary) or which parameters do not fit.
    """
    location = checkpoint.locate(path)
    description = location.description
    if not description or ('config' not in description and 'model' not in description):
        raise ValueError(f'{location.tree} states no model config (a training step written '
                         'before checkpoints described themselves); evaluate it with '
                         'python -m xfm_jax.evaluate --config=...')
    if 'config' in description:
        config = checkpoint.stored_config(description)
    else:
        config = ml_collections.ConfigDict({'model': description['model']})
    text = config.model.text
    vocab_config = _vocab_config(location, config if 'data' in config else None, text, vocab)
    if 'data' in config:
        text_len = streams.text_length(config)
    else:
        text_len = min(DEFAULT_TEXT_LEN, text.max_positions - (2 if text.variant == 'roberta'
                                                               else 0))
    module = build_model(config.model)
    mesh = partitioning.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1},
                                  jax.local_devices() if devices is None else devices)
    rules = partitioning.get_rules('dp')
    abstract, shardings = partitioning.param_shardings(module, mesh, rules)
    params = checkpoint.restore_params(location, abstract, shardings)
    return Model(module, params, config, location, mesh, rules, vocab_config, int(text_len),
                 batch_size)
