"""Loss values against numbers derived by hand or by an independent numpy implementation."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from xfm_jax import objectives
from xfm_jax.objectives import box, itc, itm, mim, mlm


class _Temperature:
    """Stands in for a bound model where an objective only reads the temperature."""

    def __init__(self, value):
        self.value = value

    def temperature(self):
        return jnp.float32(self.value)


def _numpy_itc(v, t, temp, positives, valid):
    """Independent ITC: drop invalid pairs by slicing, then explicit per-row soft-target CE."""
    keep = np.flatnonzero(valid)
    v, t, positives = v[keep], t[keep], positives[np.ix_(keep, keep)]
    logits = v @ t.T / temp

    def cross_entropy(rows, targets):
        total = 0.0
        for row, target in zip(rows, targets):
            log_prob = row - math.log(sum(math.exp(x) for x in row))
            total -= float((target / target.sum() * log_prob).sum())
        return total / len(rows)

    return 0.5 * (cross_entropy(logits, positives) + cross_entropy(logits.T, positives.T))


def _unit(*angles_deg):
    a = np.deg2rad(np.array(angles_deg))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def test_itc_two_pairs_by_hand():
    # v = t = identity, temp 1: logits = I, each row's CE = log(e + 1) - 1 = log(1 + 1/e).
    eye = np.eye(2, dtype=np.float32)
    enc = dict(image_embedding=eye, text_embedding=eye, valid=np.ones(2, np.float32),
               image_id=np.arange(2))
    loss, metrics = itc.itc(_Temperature(1.0), enc, {}, None,
                            ml_collections.ConfigDict(dict(soft_targets=False)))
    np.testing.assert_allclose(loss, math.log(1 + math.exp(-1)), rtol=1e-6)
    np.testing.assert_allclose(metrics['itc_accuracy'], 1.0)


@pytest.mark.parametrize('soft_targets', [False, True])
@pytest.mark.parametrize('valid', [(1, 1, 1, 1), (1, 0, 1, 1)])
def test_itc_matches_numpy(soft_targets, valid):
    v, t = _unit(0, 90, 40, 200), _unit(30, 80, 10, 250)
    image_id = np.array([0, 1, 1, 2])
    valid = np.array(valid, np.float32)
    positives = (image_id[:, None] == image_id[None, :]) if soft_targets else np.eye(4, dtype=bool)
    enc = dict(image_embedding=v, text_embedding=t, valid=valid, image_id=image_id)
    loss, _ = itc.itc(_Temperature(0.5), enc, {}, None,
                      ml_collections.ConfigDict(dict(soft_targets=soft_targets)))
    np.testing.assert_allclose(loss, _numpy_itc(v, t, 0.5, positives, valid), rtol=1e-5)


def test_itc_on_a_batch_sharded_over_8_devices():
    """The logits span the whole (global) batch even when each device holds one row."""
    mesh = Mesh(np.array(jax.devices()[:8]), ('data',))
    rng = np.random.default_rng(0)
    v, t = (x / np.linalg.norm(x, axis=1, keepdims=True)
            for x in rng.standard_normal((2, 8, 4)).astype(np.float32))
    sharded = NamedSharding(mesh, P('data'))
    fn = jax.jit(lambda a, b: itc.contrastive_loss(a, b, 0.1, jnp.eye(8, dtype=bool),
                                                   jnp.ones(8))[0])
    loss = fn(jax.device_put(v, sharded), jax.device_put(t, sharded))
    np.testing.assert_allclose(loss, _numpy_itc(v, t, 0.1, np.eye(8), np.ones(8)), rtol=1e-5)


def test_giou_known_boxes():
    # (cx, cy, w, h) -> corners by hand:
    #   A (0.5,0.5,0.4,0.4) = [0.3,0.7]^2, B (0.6,0.6,0.4,0.4) = [0.4,0.8]^2: intersection 0.09,
    #   union 0.23, hull [0.3,0.8]^2 = 0.25 -> 0.09/0.23 - 0.02/0.25.
    #   C (0.2,0.2,0.2,0.2) = [0.1,0.3]^2, D (0.8,0.8,0.2,0.2) = [0.7,0.9]^2: disjoint, union
    #   0.08, hull 0.64 -> -(0.64 - 0.08)/0.64 = -0.875.
    #   A vs E (0.5,0.5,0.2,0.2) = [0.4,0.6]^2 inside A: IoU 0.04/0.16, hull = A -> 0.25.
    boxes_a = np.array([[.5, .5, .4, .4], [.2, .2, .2, .2], [.5, .5, .4, .4], [.3, .6, .2, .5]])
    boxes_b = np.array([[.6, .6, .4, .4], [.8, .8, .2, .2], [.5, .5, .2, .2], [.3, .6, .2, .5]])
    expected = [0.09 / 0.23 - 0.02 / 0.25, -0.875, 0.25, 1.0]
    np.testing.assert_allclose(box.generalized_iou(boxes_a, boxes_b), expected, rtol=1e-5)


def test_box_loss_excludes_weightless_boxes_from_sum_and_count():
    predicted = np.array([[.5, .5, .4, .4], [.2, .2, .2, .2], [0., 0., 0., 0.]], np.float32)
    target = np.array([[.6, .6, .4, .4], [.8, .8, .2, .2], [0., 0., 0., 0.]], np.float32)
    weights = np.array([1., 1., 0.], np.float32)  # the third: a whole-image caption
    l1, giou_loss = box.box_loss(predicted, target, weights)
    np.testing.assert_allclose(l1, (0.2 + 1.2) / 2, rtol=1e-5)
    np.testing.assert_allclose(
        giou_loss, ((1 - (0.09 / 0.23 - 0.02 / 0.25)) + (1 + 0.875)) / 2, rtol=1e-5)
    # The zero-area excluded box must not poison the gradient with NaN.
    grad = jax.grad(lambda p: sum(box.box_loss(p, target, weights)))(predicted)
    assert np.isfinite(grad).all() and not grad[2].any()


def test_masked_lm_loss_ignores_unmasked_and_padded_positions():
    # Positions 0 (start token) and 3 (padding) have weight 0 and deliberately wrong, confident
    # logits; position 1: logits (2,0,0), target 0 -> log(1 + 2e^-2); position 2: (0,1,0),
    # target 2 -> log(2 + e).
    logits = np.array([[[0, 9, 0], [2, 0, 0], [0, 1, 0], [9, 0, 0]]], np.float32)
    targets = np.array([[2, 0, 2, 1]])
    weights = np.array([[0, 1, 1, 0]], np.float32)
    loss, accuracy = mlm.masked_lm_loss(logits, targets, weights)
    np.testing.assert_allclose(
        loss, (math.log(1 + 2 * math.exp(-2)) + math.log(2 + math.e)) / 2, rtol=1e-6)
    np.testing.assert_allclose(accuracy, 0.5)


class _OneHotLM:
    """A language model whose logits are 3 * one_hot(input id): CE by hand is easy."""
    vocab = 4

    def encode_text_for_mlm(self, ids, mask, *, train):
        return ids

    def text_mlm_logits(self, hidden):
        return 3.0 * jax.nn.one_hot(hidden, self.vocab)


def test_mlm_objective_reads_masked_ids_targets_and_weights():
    # Masked position holds id 3 and targets 1: CE = log(e^3 + 3) - 0. Padding (id 0, weight 0)
    # and the unmasked positions (input = target, would give log(e^3 + 3) - 3) do not count.
    enc = dict(masked_ids=np.array([[2, 3, 1, 0]]), attention_mask=np.array([[1, 1, 1, 0]]),
               mlm_targets=np.array([[2, 1, 1, 0]]), mlm_weights=np.array([[0, 1, 0, 0]], 'f4'),
               train=False)
    loss, metrics = mlm.mlm(_OneHotLM(), enc, {}, None, ml_collections.ConfigDict())
    np.testing.assert_allclose(loss, math.log(math.exp(3) + 3), rtol=1e-6)
    np.testing.assert_allclose(metrics['mlm_accuracy'], 0.0)


def test_mim_loss_by_hand():
    # One image, 2 patches of width 2, target zeros: masked patch 1 = (2, 0) -> (4 + 0) / 2;
    # the unmasked patch 2 = (5, 5) does not count; token 0 = (1, 1) -> (1 + 1) / 2.
    predicted = np.array([[[1, 1], [2, 0], [5, 5]]], np.float32)
    patch_loss, pooled_loss = mim.mim_loss(predicted, np.zeros_like(predicted),
                                           np.array([[True, False]]))
    np.testing.assert_allclose([patch_loss, pooled_loss], [2.0, 1.0])


def test_hard_negatives_never_positive_same_id_or_invalid_and_stay_in_group():
    """The 'image' rule; the 1e-5 floor is below what 4000 draws resolve here."""
    # Two groups of 4. Group 0: rows 0 and 1 show the same image; row 3 is padding.
    # Group 1: rows 4..7 with distinct ids except 6 == 7.
    image_id = np.array([10, 10, 11, 12, 20, 21, 22, 22])
    valid = np.array([1, 1, 1, 0, 1, 1, 1, 1], np.float32)
    rng = np.random.default_rng(0)
    v, t = (x / np.linalg.norm(x, axis=1, keepdims=True)
            for x in rng.standard_normal((2, 8, 3)).astype(np.float32))
    temp = 0.5
    draws = 4000
    keys = jax.random.split(jax.random.key(0), draws)
    neg_text, neg_image, has_negative = jax.jit(jax.vmap(
        lambda k: itm.sample_negatives(k, v, t, temp, image_id, valid, num_groups=2,
                                       exclude='image')))(keys)
    neg_text, neg_image = np.asarray(neg_text), np.asarray(neg_image)

    # Independently: which candidates an anchor may draw, and with which probability.
    group = np.arange(8) // 4
    allowed = ((group[:, None] == group[None, :]) & (image_id[:, None] != image_id[None, :])
               & (valid[None, :] > 0))
    np.testing.assert_array_equal(has_negative[0], allowed.any(axis=1))
    sim = v @ t.T / temp
    for anchor in range(8):
        if not allowed[anchor].any():
            continue
        for drawn, logits in ((neg_text[:, anchor], sim[anchor]),
                              (neg_image[:, anchor], sim[:, anchor])):
            assert allowed[anchor][drawn].all(), (anchor, np.unique(drawn))
            weights = np.where(allowed[anchor], np.exp(logits), 0.0)
            counts = np.bincount(drawn, minlength=8) / draws
            np.testing.assert_allclose(counts, weights / weights.sum(), atol=0.03)


def test_objective_stream_validity_errors():
    assert objectives.get('box', 'region') is box.box
    with pytest.raises(ValueError, match=r"'mim'.*'region'"):
        objectives.get('mim', 'region')
    with pytest.raises(ValueError, match=r"'box'.*'image_text'"):
        objectives.get('box', 'image_text')
    with pytest.raises(ValueError, match=r"'mlm'.*'image_text'"):
        objectives.get('mlm', 'image_text')
    with pytest.raises(ValueError, match='Unknown objective'):
        objectives.get('mae', 'image')
    with pytest.raises(ValueError, match='Unknown stream'):
        objectives.get('itc', 'audio')
