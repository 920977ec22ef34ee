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
