"""A broken model never scores: constant or non-finite predictions give no correlation, and
every evaluator reports non-finite outputs instead of a metric."""

import numpy as np
import pytest

from xfm_jax.finetuning import common


def test_constant_prediction_has_no_correlation():
    targets = np.array([1.0, 2.0, 3.0])
    out = common.score_regression(np.full(3, 0.7), targets, targets)
    assert out['pearson'] == 0.0 and out['spearman'] == 0.0  # was Spearman 100 (ties by position)
    # Tied predictions share a rank: (1, 1, 2) ranks (1.5, 1.5, 3) against (1, 2, 3); centred
    # (-.5, -.5, 1) . (-1, 0, 1) = 1.5 over sqrt(1.5) sqrt(2) -> 0.866.
    out = common.score_regression(np.array([1.0, 1.0, 2.0]), targets, targets)
    assert out['spearman'] == pytest.approx(100 * 1.5 / np.sqrt(3.0))
    # NaN predictions: no number that could pass for a score.
    out = common.score_regression(np.array([np.nan, 1.0, 2.0]), targets, targets)
    assert np.isnan(out['pearson']) and np.isnan(out['spearman'])


@pytest.fixture(scope='module')
def nan_ctx(eval_config, random_arrays, tmp_path_factory):
    """The evaluators' context with every parameter NaN: a converted checkpoint gone wrong."""
    import jax
    from xfm_jax import partitioning
    from xfm_jax.evaluators import batching
    from xfm_jax.models.model import build_model
    mesh = partitioning.make_mesh(eval_config.partitioning.mesh)
    rules = partitioning.get_rules(eval_config.partitioning.rules)
    model = build_model(eval_config.model)
    params = jax.tree.map(lambda x: x * float('nan'),
                          random_arrays(*partitioning.param_shardings(model, mesh, rules)))
    return batching.EvalContext(model=model, params=params, mesh=mesh, rules=rules,
                                config=eval_config, batch_size=8,
                                workdir=str(tmp_path_factory.mktemp('eval')), step=0)


# Slow: compiles the tiny model's encoders and fusion heads (~30 s of CPU). The probes share
# linear_probe.frozen_features and metrics.nonfinite with zero-shot classification.
@pytest.mark.slow
@pytest.mark.parametrize('name', ['retrieval', 'zero_shot_classification', 'grounding'])
def test_evaluators_report_nonfinite_instead_of_metrics(nan_ctx, name):
    from xfm_jax import evaluators
    out = evaluators.get(name)(nan_ctx, nan_ctx.config.evaluate[name])
    assert out['nonfinite'] > 0
    # No accuracy or recall at all: R@1 = 100 % from NaN scores was the old failure.
    assert not [k for k in out if 'r1' in k or 'top1' in k or k == 'accuracy'], out
