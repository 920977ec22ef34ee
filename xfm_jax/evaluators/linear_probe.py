"""Linear probe: multinomial logistic regression (optax Adam, full batch) on FROZEN image
features (vision token 0: the mean of the normed patch tokens), trained on one split and scored
on another. Needs a source with a ``label`` class feature.

Settings (``config.evaluate.linear_probe``): ``source``, ``train_split``, ``test_split``,
``max_train_images``, ``max_test_images``, ``steps``, ``learning_rate``, ``weight_decay``.
Metrics (percent): ``train_top1``, ``test_top1``, ``majority_class`` (the commonest class of
the test split); ``num_train``, ``num_test``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

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


def evaluate(ctx: batching.EvalContext, settings) -> dict[str, float]:
    train = data.load(ctx.config, settings.source, settings.train_split,
                      settings.max_train_images)
    test = data.load(ctx.config, settings.source, settings.test_split, settings.max_test_images)
    if train.labels is None:
        raise ValueError(f'linear_probe: source {settings.source!r} has no class labels '
                         "('label' feature); set config.evaluate.linear_probe.source.")
    model = ctx.model
    encode = jax.jit(lambda params, b: model.apply(
        {'params': params}, b['image'], method=lambda m, x: m.encode_image(x)[:, 0]))
    train_x, test_x = (ctx.map(encode, s.num_images, batching.take({'image': s.images}),
                               f'linear probe: {split} features').astype(np.float32)
                       for s, split in ((train, 'train'), (test, 'test')))
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    weights, bias = fit_logistic_regression(
        train_x, train.labels, len(train.label_names), steps=settings.steps,
        learning_rate=settings.learning_rate, weight_decay=settings.weight_decay)
    return {'train_top1': metrics.top1_accuracy(train_x @ weights + bias, train.labels),
            'test_top1': metrics.top1_accuracy(test_x @ weights + bias, test.labels),
            'majority_class': 100.0 * float(np.max(np.bincount(test.labels)) / len(test.labels)),
            'num_train': float(train.num_images), 'num_test': float(test.num_images)}
