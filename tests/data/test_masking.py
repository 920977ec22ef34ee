"""MLM / MIM masks and box geometry against the formulas of docs/design.md §11, computed by hand."""

import numpy as np
import pytest

from xfm_jax.data import masking


@pytest.mark.parametrize('length,prob,max_masks,expected', [
    (20, 0.15, 20, 3), (200, 0.15, 20, 20), (2, 0.15, 20, 1), (30, 0.5, 15, 15), (10, 0.5, 12, 5),
    (25, 0.5, 12, 12)])
def test_mlm_mask_count_and_positions(length, prob, max_masks, expected):
    ids = np.arange(1000, 1000 + length + 5)  # 5 padding positions after `length`
    for seed in range(50):
        _, weights = masking.mlm_mask(ids, length, np.random.default_rng(seed), mask_prob=prob,
                                      max_masks=max_masks, mask_id=7, vocab_size=50)
        assert weights.sum() == expected
        assert weights[0] == 0 and weights[length:].sum() == 0


def test_mlm_mask_replacement_statistics_and_spans():
    length, ids = 40, np.arange(1000, 1040)
    kinds = np.zeros(3)
    adjacent = total = 0
    last_masked = 0
    for seed in range(3000):
        masked, weights = masking.mlm_mask(ids, length, np.random.default_rng(seed), mask_prob=0.15,
                                           max_masks=20, mask_id=7, vocab_size=50)
        pos = np.flatnonzero(weights)
        kinds += [np.sum(masked[pos] == 7), np.sum((masked[pos] < 50) & (masked[pos] != 7)),
                  np.sum(masked[pos] == ids[pos])]
        adjacent += np.sum(np.diff(pos) == 1)
        total += len(pos)
        last_masked += weights[length - 1]
        assert np.array_equal(masked[weights == 0], ids[weights == 0])
    fractions = kinds / kinds.sum()
    # Random ids equal to the mask id are counted as masks: shift 0.1/50 at most.
    np.testing.assert_allclose(fractions, [0.8, 0.1, 0.1], atol=0.015)
    # The end token can be masked: about n/(L-1) of the time.
    assert 0.08 < last_masked / 3000 < 0.2
    # With independent single positions adjacent pairs among 6 of 39 are ~ 6*5/39 = 0.77 per text;
    # 2-3 token spans (prob 0.2) raise it. Measured: rate per text well above the no-span level.
    assert adjacent / 3000 > 1.0


def test_block_mim_mask_exact_count_and_blocky():
    neighbours = []
    for seed in range(200):
        mask = masking.block_mim_mask(np.random.default_rng(seed), grid=14, num_masked=75)
        assert mask.shape == (196,) and mask.sum() == 75
        grid = mask.reshape(14, 14)
        padded = np.pad(grid, 1)
        has_neighbour = (padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:])
        neighbours.append(has_neighbour[grid].mean())
    # Random placement of 75/196 gives ~1-(1-0.38)^4 = 0.85 with a neighbour; blocks give ~1.
    assert np.mean(neighbours) > 0.97
    tiny = masking.block_mim_mask(np.random.default_rng(0), grid=4, num_masked=6, min_block=1)
    assert tiny.sum() == 6
    with pytest.raises(ValueError, match='num_masked=17'):
        masking.block_mim_mask(np.random.default_rng(0), grid=4, num_masked=17)


def test_box_patch_mask_hand_computed():
    # 224 px, 16 px patches: x=20, w=40 -> cols floor(20/16)=1 .. ceil(60/16)=4 -> 1, 2, 3;
    # y=35, h=10 -> rows 2 .. max(3, ceil(45/16)=3) -> row 2.
    mask = masking.box_patch_mask(np.array([20.0, 35.0, 40.0, 10.0]), image_size=224, patch_size=16)
    assert np.flatnonzero(mask).tolist() == [2 * 14 + 1, 2 * 14 + 2, 2 * 14 + 3]
    # A zero-width box on a patch border still covers one column: floor(32/16)=2 .. max(3, 2).
    mask = masking.box_patch_mask(np.array([32.0, 0.0, 0.0, 16.0]), image_size=224, patch_size=16)
    assert np.flatnonzero(mask).tolist() == [2]
    # Whole image covers all patches; batched input keeps leading dims.
    full = masking.box_patch_mask(np.array([[[0.0, 0.0, 32.0, 32.0]]]), image_size=32,
                                  patch_size=8)
    assert full.shape == (1, 1, 16) and full.all()


def test_box_to_cxcywh():
    out = masking.box_to_cxcywh(np.array([20.0, 35.0, 40.0, 10.0]), 224)
    np.testing.assert_allclose(out, [40 / 224, 40 / 224, 40 / 224, 10 / 224], rtol=1e-6)
