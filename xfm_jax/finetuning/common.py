"""What every fine-tuning task shares: in-memory example sets, shuffled training batches, the
image-set reader, classification losses, and scoring a classifier over an evaluation set.

Texts are read once into host numpy arrays (tokenised); images stay on disk in an
``evaluators.data.ImageTable`` that decodes (resize to the model's resolution, CLIP
normalisation) only the rows of the batch being built, so host memory follows the batch size,
not the split. Every epoch is a new permutation. Rows point at their image by index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats

from xfm_jax import partitioning
from xfm_jax.evaluators import batching, data as eval_data, metrics

# Row fields holding an index into ``Examples.images`` -> the batch field they become.
IMAGE_REFERENCES = {'image_index': 'image', 'left_index': 'left_image',
                    'right_index': 'right_image'}


@dataclasses.dataclass(frozen=True)
class Examples:
    """N rows of equally long arrays, plus a shared image table the rows index into."""
    rows: dict[str, np.ndarray]  # field -> [N, ...]
    images: eval_data.ImageTable | None = None  # float32 [M, S, S, 3], decoded when indexed
    label_names: tuple[str, ...] = ()  # class names ([] for regression and retrieval)
    # Per-row strings for reports such as galleries (the question, the true answer); not batched.
    display: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # Per-row evaluation targets that never go to the device (VQA's soft answer credit [N, A]).
    targets: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        sizes = {name: len(array) for name, array in self.rows.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f'Example fields have different lengths: {sizes}.')
        if not next(iter(sizes.values())):
            raise ValueError('No examples were read (an empty split, or max_examples filtered '
                             'everything out).')
        bad = {name: len(texts) for name, texts in {**self.display, **self.targets}.items()
               if len(texts) != len(self)}
        if bad:
            raise ValueError(f'Display strings / targets {bad} do not match the {len(self)} rows.')

    def __len__(self) -> int:
        return len(next(iter(self.rows.values())))

    def take(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """A batch: the rows at ``index`` with image references replaced by their pixels."""
        out = {}
        for name, array in self.rows.items():
            if name in IMAGE_REFERENCES:
                out[IMAGE_REFERENCES[name]] = self.images[array[index]]
            else:
                out[name] = array[index]
        return out


def training_batches(examples: Examples, batch_size: int, mesh, seed: int,
                     start_step: int = 0) -> Iterator[dict]:
    """Endless global batches sharded over ('data', 'fsdp'): a new permutation every epoch (the
    incomplete last batch of an epoch is dropped). Each process takes its slice of the rows."""
    if len(examples) < batch_size:
        raise ValueError(f'{len(examples)} training examples are fewer than one batch of '
                         f'{batch_size} (train.batch_size).')
    per_epoch = len(examples) // batch_size
    local = batch_size // jax.process_count()
    mine = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
    step = start_step
    while True:
        epoch, position = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(examples))
        index = order[position * batch_size:(position + 1) * batch_size]
        yield partitioning.shard_batch(examples.take(index[mine]), mesh)
        step += 1


def read_image_set(config, source: str, split: str, max_images: int) -> eval_data.EvalSet:
    """One split of an image-text source through the evaluators' reader: whole-image resize,
    CLIP normalisation, captions tokenised to ``data.streams.image_text.text_len`` (the fine-tune
    configs set it to ``task.text_len``); ``source`` '' is the config's first image-text source."""
    return eval_data.load(config, source, split, max_images)


def tokenizer(config) -> eval_data.Tokenizer:
    """Cleans and tokenises task texts to ``cls tokens sep`` of ``task.text_len``."""
    return eval_data.Tokenizer(config.data.vocab, config.task.text_len)


# ---- losses --------------------------------------------------------------------------------------

def classification_loss(logits, labels):
    """logits [B, C] (fp32), labels int [B] -> (mean CE, {'accuracy'})."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    return loss, {'accuracy': accuracy}


def regression_loss(predictions, targets):
    """predictions [B, 1], targets float [B] -> (MSE, {'mae'})."""
    error = predictions[:, 0] - targets
    return jnp.mean(error ** 2), {'mae': jnp.mean(jnp.abs(error))}


# ---- evaluation ----------------------------------------------------------------------------------

def predict(task_model, params, examples: Examples, *, batch_size: int, mesh, rules,
            name: str) -> np.ndarray:
    """``task_model(batch)`` (its ``__call__``, no dropout) over every row -> numpy [N, ...]."""
    fn = jax.jit(lambda p, b: task_model.apply({'params': p}, b))
    return batching.map_batches(fn, params, len(examples), examples.take,
                                batch_size=batch_size, mesh=mesh, rules=rules, name=name)


def majority_accuracy(train_labels: np.ndarray, eval_labels: np.ndarray) -> float:
    """Percent of ``eval_labels`` equal to the commonest training label: the chance level of a
    classifier that learnt only the class prior."""
    commonest = np.bincount(train_labels).argmax()
    return 100.0 * float(np.mean(eval_labels == commonest))


def score_classifier(logits: np.ndarray, labels: np.ndarray,
                     train_labels: np.ndarray) -> dict[str, float]:
    """``accuracy`` and ``chance/accuracy`` (the commonest training class), percent."""
    return {'accuracy': metrics.top1_accuracy(logits, labels),
            'chance/accuracy': majority_accuracy(train_labels, labels),
            'num_examples': float(len(labels))}


def score_regression(predictions: np.ndarray, targets: np.ndarray,
                     train_targets: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation (x100, as GLUE's STS-B; scipy.stats, ties ranked
    together), MSE; chance: predicting the training mean (correlation 0, its MSE). A constant
    prediction or target has no correlation: reported as 0, never as a perfect one."""
    predictions = np.asarray(predictions, np.float64).reshape(-1)
    targets = np.asarray(targets, np.float64)

    def correlation(test, a, b):
        if np.ptp(a) == 0 or np.ptp(b) == 0:  # undefined; scipy would warn and return nan
            return 0.0
        return float(test(a, b).statistic)

    return {'pearson': 100.0 * correlation(scipy.stats.pearsonr, predictions, targets),
            'spearman': 100.0 * correlation(scipy.stats.spearmanr, predictions, targets),
            'mse': float(np.mean((predictions - targets) ** 2)),
            'chance/mse': float(np.mean((train_targets.mean() - targets) ** 2)),
            'num_examples': float(len(targets))}
