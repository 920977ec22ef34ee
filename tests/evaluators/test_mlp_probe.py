"""The MLP probe: fits what a linear model cannot, fails (chance) on shuffled labels, and runs
on frozen features of a random-init tiny model."""

import numpy as np
import pytest

from xfm_jax.evaluators import linear_probe, metrics, mlp_probe

SETTINGS = dict(hidden_dim=32, steps=300, eval_every=50, learning_rate=0.01, weight_decay=0.0)


def _xor(rng, n):
    """Two classes in four clusters at (+-1, +-1): the label is whether the signs agree (no line
    separates it: a linear model gets at most 3 of 4 clusters), plus 4 noise features."""
    signs = rng.choice([-1.0, 1.0], size=(n, 2))
    features = np.concatenate([signs + 0.2 * rng.normal(size=(n, 2)),
                               rng.normal(size=(n, 4))], axis=1)
    return features, (signs[:, 0] == signs[:, 1]).astype(np.int32)


def test_mlp_fits_xor_and_fails_on_shuffled_labels():
    rng = np.random.default_rng(0)
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (_xor(rng, n) for n in (400, 100, 400))
    params, best_step = mlp_probe.fit_mlp(train_x, train_y, val_x, val_y, 2, **SETTINGS)
    test_logits = np.asarray(mlp_probe.mlp_logits(params, test_x))
    assert metrics.top1_accuracy(test_logits, test_y) > 95
    assert best_step in range(50, 301, 50)

    weights, bias = linear_probe.fit_logistic_regression(
        train_x, train_y, 2, steps=300, learning_rate=0.1, weight_decay=0.0)
    assert metrics.top1_accuracy(test_x @ weights + bias, test_y) < 80  # the MLP's point

    # Labels shuffled in training and validation: nothing carries over to the true test labels
    # (400 test rows: chance 50 %, one standard deviation 2.5 points).
    shuffled, shuffled_val = rng.permutation(train_y), rng.permutation(val_y)
    params, _ = mlp_probe.fit_mlp(train_x, shuffled, val_x, shuffled_val, 2, **SETTINGS)
    test_logits = np.asarray(mlp_probe.mlp_logits(params, test_x))
    assert abs(metrics.top1_accuracy(test_logits, test_y) - 50) < 10


def test_mlp_probe_on_frozen_features(eval_config, random_arrays):
    from xfm_jax import partitioning
    from xfm_jax.evaluators import batching, data
    from xfm_jax.models.model import build_model
    mesh = partitioning.make_mesh(eval_config.partitioning.mesh)
    rules = partitioning.get_rules(eval_config.partitioning.rules)
    model = build_model(eval_config.model)
    ctx = batching.EvalContext(model=model,
                               params=random_arrays(*partitioning.param_shardings(model, mesh, rules)),
                               mesh=mesh, rules=rules, config=eval_config, batch_size=8)
    settings = eval_config.evaluate.mlp_probe.copy_and_resolve_references()
    settings.update(max_train_images=24, max_test_images=12, steps=40, val_fraction=0.25)
    out = mlp_probe.evaluate(ctx, settings)
    assert (out['num_train'], out['num_val'], out['num_test']) == (18, 6, 12)
    test = data.load(eval_config, '', 'validation', 12)
    assert out['chance'] == 25.0  # four shapes
    assert out['majority_class'] == pytest.approx(100 * np.bincount(test.labels).max() / 12)
    assert out['best_step'] in (20, 40)
    for split in ('train', 'val', 'test'):
        assert 0 <= out[f'{split}_top1'] <= 100
