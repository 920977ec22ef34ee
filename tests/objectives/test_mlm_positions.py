"""Running the MLM head only on the masked positions changes nothing but the cost."""

import numpy as np

from xfm_jax.objectives.mlm import masked_lm_loss, masked_positions


def test_masked_positions_keep_every_masked_row_in_order():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((2, 6, 3)).astype(np.float32)
    targets = rng.integers(0, 5, (2, 6))
    weights = np.array([[0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 1, 0]], np.float32)
    h, t, w = masked_positions(hidden, targets, weights, max_predictions=3)
    np.testing.assert_array_equal(np.asarray(h[0]), hidden[0, [1, 3, 4]])
    np.testing.assert_array_equal(np.asarray(t[0]), targets[0, [1, 3, 4]])
    np.testing.assert_array_equal(np.asarray(w), [[1, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(np.asarray(h[1, 0]), hidden[1, 4])


def test_loss_on_gathered_positions_equals_loss_on_all_positions():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((3, 8, 11)).astype(np.float32)  # a linear 'head' is the identity
    targets = rng.integers(0, 11, (3, 8))
    weights = (rng.random((3, 8)) < 0.3).astype(np.float32)
    weights[:, 0] = 0
    full = masked_lm_loss(logits, targets, weights)
    cap = int(weights.sum(1).max())
    gathered = masked_lm_loss(*masked_positions(logits, targets, weights, cap))
    np.testing.assert_allclose(np.asarray(gathered), np.asarray(full), rtol=1e-6)
