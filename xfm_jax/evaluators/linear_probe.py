"""Linear probe: multinomial logistic regression (optax Adam, full batch) on FROZEN image
features (vision token 0: the mean of the normed patch tokens), trained on one split and scored
on another. Needs a source with a ``label`` class feature.

Settings (``config.evaluate.linear_probe``): ``source``, ``train_split``, ``test_split``,
``max_train_images``, ``max_test_images``, ``steps``, ``learning_rate``, ``weight_decay``.
Metrics (percent): ``train_top1``, ``test_top1``, ``majority_class`` (the commonest class of
the test split); ``num_train``, ``num_test``; ``nonfinite`` instead of the accuracies when the
frozen features hold NaN or inf.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xfm_jax import evaluators
from xfm_jax.evaluators import batching, data, metrics


def fit_logistic_regression(features: np.ndarray, labels: np.ndarray, num_classes: int, *,
                            steps: int, learning_rate: float, weight_decay: float):
    """features [N, D] (standardise them first), labels int [N] -> (weights [D, C], bias [C])."""
    x, y = jnp.asarray(features, jnp.float32), jnp.asarray(labels)
    params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))
    tx = optax.adam(learning_rate)

    def loss_fn(p):
        logits = x @ p[0] + p[1]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + 0.5 * weight_decay * jnp.sum(p[0] ** 2)

    def step(carry, _):
        p, opt_state = carry
        updates, opt_state = tx.update(jax.grad(loss_fn)(p), opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), None

    (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))(
        (params, tx.init(params)))
    return jax.device_get(params)


def frozen_features(ctx: batching.EvalContext, settings, name: str):
    """Standardised frozen features of ``settings.train_split`` and ``settings.test_split``
    (statistics of the train features): (train_x [N, Dv], train_y, test_x, test_y, number of
    classes). Shared with the MLP probe."""
    train = data.load(ctx.config, settings.source, settings.train_split,
                      settings.max_train_images)
    test = data.load(ctx.config, settings.source, settings.test_split, settings.max_test_images)
    if train.labels is None:
        raise evaluators.SourceLacks(f'{name}: source {settings.source!r} has no class labels '
                         f"('label' feature); set config.evaluate.{name}.source.")
    train_x, test_x = (ctx.map(batching.image_features(ctx.model), s.num_images,
                               batching.take({'image': s.images}),
                               f'{name}: {split} features').astype(np.float32)
                       for s, split in ((train, 'train'), (test, 'test')))
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    return ((train_x - mean) / std, train.labels, (test_x - mean) / std, test.labels,
            len(train.label_names))


def majority_class(labels: np.ndarray) -> float:
    """Accuracy (percent) of always answering the commonest class."""
    return 100.0 * float(np.max(np.bincount(labels)) / len(labels))


def evaluate(ctx: batching.EvalContext, settings) -> dict[str, float]:
    train_x, train_y, test_x, test_y, num_classes = frozen_features(ctx, settings,
                                                                     'linear_probe')
    broken = metrics.nonfinite('linear_probe', train_features=train_x, test_features=test_x)
    if broken:
        return broken
    weights, bias = fit_logistic_regression(
        train_x, train_y, num_classes, steps=settings.steps,
        learning_rate=settings.learning_rate, weight_decay=settings.weight_decay)
    return {'train_top1': metrics.top1_accuracy(train_x @ weights + bias, train_y),
            'test_top1': metrics.top1_accuracy(test_x @ weights + bias, test_y),
            'majority_class': majority_class(test_y),
            'num_train': float(len(train_y)), 'num_test': float(len(test_y))}
