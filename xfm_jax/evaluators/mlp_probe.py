"""MLP probe (X-FM's frozen-feature evaluation, docs/design.md §12): a 1-hidden-layer MLP trained on
FROZEN image features (vision token 0, standardised; the linear probe's features), with a
validation part held out of the training split choosing the step whose parameters are scored
on the test split.

Settings (``config.evaluate.mlp_probe``): the linear probe's ``source``, ``train_split``,
``test_split``, ``max_train_images``, ``max_test_images``, ``steps``, ``learning_rate``,
``weight_decay``; plus ``hidden_dim`` (the MLP width), ``val_fraction`` (of the training rows,
drawn at random, held out), ``eval_every`` (steps between validation checks).
Metrics (percent): ``train_top1``, ``val_top1``, ``test_top1`` (all at the chosen step),
``majority_class`` (always the commonest test class), ``chance`` (100 / classes);
``best_step``, ``num_train``, ``num_val``, ``num_test``; ``nonfinite`` instead of them all when the
frozen features hold NaN or inf.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xfm_jax.evaluators import batching, linear_probe, metrics


def init_mlp(rng: jax.Array, in_dim: int, hidden_dim: int, num_classes: int) -> dict:
    """He-normal hidden layer, zero output layer (the MLP starts at uniform predictions)."""
    return {'hidden': {'kernel': jax.random.normal(rng, (in_dim, hidden_dim)) * (2 / in_dim) ** 0.5,
                       'bias': jnp.zeros((hidden_dim,))},
            'out': {'kernel': jnp.zeros((hidden_dim, num_classes)),
                    'bias': jnp.zeros((num_classes,))}}


def mlp_logits(params: dict, x) -> jax.Array:
    """x [N, D] -> logits [N, C]: Dense -> GELU -> Dense."""
    hidden = jax.nn.gelu(x @ params['hidden']['kernel'] + params['hidden']['bias'],
                         approximate=False)
    return hidden @ params['out']['kernel'] + params['out']['bias']


def fit_mlp(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
            num_classes: int, *, hidden_dim: int, steps: int, eval_every: int,
            learning_rate: float, weight_decay: float, seed: int = 0) -> tuple[dict, int]:
    """Full-batch Adam on softmax cross-entropy + L2 on the kernels; every ``eval_every`` steps
    the validation accuracy is measured. Returns (the parameters of the step with the best
    validation accuracy, the earliest on ties; that step)."""
    x, y = jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y)
    params = init_mlp(jax.random.key(seed), x.shape[1], hidden_dim, num_classes)
    tx = optax.adam(learning_rate)

    def loss_fn(p):
        ce = optax.softmax_cross_entropy_with_integer_labels(mlp_logits(p, x), y).mean()
        return ce + 0.5 * weight_decay * sum(jnp.sum(p[layer]['kernel'] ** 2)
                                             for layer in ('hidden', 'out'))

    def step(carry, _):
        p, opt_state = carry
        updates, opt_state = tx.update(jax.grad(loss_fn)(p), opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), None

    eval_every = max(1, min(eval_every, steps))
    run_chunk = jax.jit(lambda c: jax.lax.scan(step, c, None, length=eval_every)[0])
    carry, best = (params, tx.init(params)), (-1.0, params, 0)
    for done in range(eval_every, steps + 1, eval_every):
        carry = run_chunk(carry)
        accuracy = metrics.top1_accuracy(np.asarray(mlp_logits(carry[0], val_x)), val_y)
        if accuracy > best[0]:
            best = (accuracy, carry[0], done)
    return jax.device_get(best[1]), best[2]


def evaluate(ctx: batching.EvalContext, settings) -> dict[str, float]:
    train_x, train_y, test_x, test_y, num_classes = linear_probe.frozen_features(
        ctx, settings, 'mlp_probe')
    broken = metrics.nonfinite('mlp_probe', train_features=train_x, test_features=test_x)
    if broken:
        return broken
    order = np.random.default_rng(0).permutation(len(train_y))
    num_val = int(np.clip(round(settings.val_fraction * len(train_y)), 1, len(train_y) - 1))
    val, fit = order[:num_val], order[num_val:]
    params, best_step = fit_mlp(
        train_x[fit], train_y[fit], train_x[val], train_y[val], num_classes,
        hidden_dim=settings.hidden_dim, steps=settings.steps, eval_every=settings.eval_every,
        learning_rate=settings.learning_rate, weight_decay=settings.weight_decay)

    def top1(x, y):
        return metrics.top1_accuracy(np.asarray(mlp_logits(params, x)), y)
    return {'train_top1': top1(train_x[fit], train_y[fit]),
            'val_top1': top1(train_x[val], train_y[val]),
            'test_top1': top1(test_x, test_y),
            'majority_class': linear_probe.majority_class(test_y),
            'chance': 100.0 / num_classes, 'best_step': float(best_step),
            'num_train': float(len(fit)), 'num_val': float(num_val),
            'num_test': float(len(test_y))}
