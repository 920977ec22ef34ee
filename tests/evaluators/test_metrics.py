"""Metrics against values derived by hand (the derivations are in the comments)."""

import numpy as np
import pytest

from xfm_jax.evaluators import metrics

# 3 images, 4 texts; texts 0 and 1 describe image 0, text 2 image 1, text 3 image 2.
SIMILARITY = np.array([[0.9, 0.1, 0.8, 0.2],
                       [0.3, 0.2, 0.4, 0.5],
                       [0.1, 0.7, 0.6, 0.0]])
TEXT_IMAGE = np.array([0, 0, 1, 2])


def test_retrieval_recall_both_directions():
    # text->image, per column: t0 true image first (rank 0); t1 [0.1, 0.2, 0.7] true last (2);
    # t2 [0.8, 0.4, 0.6] true last (2); t3 [0.2, 0.5, 0.0] true last (2).
    # image->text, best right vs wrong: img0 0.9 beats all (0); img1 0.4 < 0.5 (1);
    # img2 0.0 below all three wrong (3).
    out = metrics.retrieval_recall(SIMILARITY, TEXT_IMAGE, ks=(1, 2, 3))
    assert out == pytest.approx({'t2i_r1': 25.0, 't2i_r2': 25.0, 't2i_r3': 100.0,
                                 'i2t_r1': 100 / 3, 'i2t_r2': 200 / 3, 'i2t_r3': 200 / 3})


def test_ties_count_against_the_model():
    out = metrics.retrieval_recall(np.zeros((2, 2)), np.array([0, 1]), ks=(1, 2))
    assert out == {'t2i_r1': 0.0, 't2i_r2': 100.0, 'i2t_r1': 0.0, 'i2t_r2': 100.0}


def test_retrieval_chance():
    # K=1: t2i 1/3. i2t: image 0 has 2 of 4 texts: miss (3/4)(2/3) = 1/2; images 1, 2: miss 3/4;
    # mean hit (1/2 + 1/4 + 1/4) / 3 = 1/3.
    # K=2: image 0 miss (2/4)(1/3) = 1/6; images 1, 2 miss 2/4; mean (5/6 + 1/2 + 1/2) / 3 = 11/18.
    out = metrics.retrieval_chance(TEXT_IMAGE, 3, ks=(1, 2))
    assert out == pytest.approx({'t2i_r1': 100 / 3, 'i2t_r1': 100 / 3,
                                 't2i_r2': 200 / 3, 'i2t_r2': 1100 / 18})


def test_top_k_indices_and_rerank():
    similarity = np.array([[0.5], [0.9], [0.1], [0.7]])  # 4 images, 1 text query
    top = metrics.top_k_indices(similarity.T, 2)
    np.testing.assert_array_equal(top, [[1, 3]])
    reranked = metrics.rerank_top_k(similarity, top, np.array([[0.2, 0.6]]), axis=1)
    # ITM puts image 3 before image 1; images 0 and 2 follow in their ITC order.
    np.testing.assert_array_equal(np.argsort(-reranked[:, 0]), [3, 1, 0, 2])
    # Image queries (axis 0) over 3 texts: the top 2 swap, the third stays last.
    reranked = metrics.rerank_top_k(np.array([[3.0, 2.0, 1.0]]), np.array([[0, 1]]),
                                    np.array([[0.1, 0.2]]), axis=0)
    np.testing.assert_array_equal(np.argsort(-reranked[0]), [1, 0, 2])


def test_box_iou_and_accuracy():
    same = [0.5, 0.5, 0.5, 0.5]
    # Shifted right by half a width: intersection 0.25 x 0.5 = 0.125, union 0.375 -> 1/3.
    shifted = [0.75, 0.5, 0.5, 0.5]
    apart = [0.1, 0.1, 0.1, 0.1]
    predicted = np.array([same, same, same])
    target = np.array([same, shifted, apart])
    np.testing.assert_allclose(metrics.box_iou(predicted, target), [1.0, 1 / 3, 0.0])
    assert metrics.iou_accuracy(predicted, target) == pytest.approx(100 / 3)
    assert metrics.iou_accuracy(predicted, target, threshold=0.3) == pytest.approx(200 / 3)
    assert metrics.iou_accuracy(predicted, target, valid=[1, 0, 1]) == pytest.approx(50.0)


def test_top1_accuracy():
    logits = np.array([[1, 2, 0], [3, 0, 0], [0, 0, 1], [0, 5, 1]])
    assert metrics.top1_accuracy(logits, np.array([1, 0, 0, 2])) == 50.0


def test_ranked_answer_accuracy():
    # Question 0 picks answer 1 (credit 1); question 1 picks answer 0 (soft credit 0.3).
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.4, 0.1]])
    credit = np.array([[0, 1, 0], [0.3, 1, 0]])
    assert metrics.ranked_answer_accuracy(scores, credit) == pytest.approx(65.0)


def test_nonfinite_scores_rank_last():
    nan, inf = np.nan, np.inf
    # Every score NaN (a model with NaN weights): every right candidate ties with every wrong
    # one, so nothing is found at rank 0 (it used to be R@1 = 100: NaN >= best is False).
    out = metrics.retrieval_recall(np.full((3, 4), nan), TEXT_IMAGE, ks=(1,))
    assert out == {'t2i_r1': 0.0, 'i2t_r1': 0.0}
    # One NaN or inf among real scores ranks below them all. Image 0's texts 0, 1 score NaN/inf;
    # text 2 (image 1) 0.1 and text 3 (image 2) 0.2: image 0 ranks behind both -> i2t miss;
    # images 1 and 2 score their own texts best -> hits. t2i: texts 0, 1 see NaN/inf at their
    # true image and 0.0 elsewhere: misses; texts 2, 3: hits.
    scores = np.array([[nan, inf, 0.1, 0.2],
                       [0.0, 0.0, 0.5, 0.0],
                       [0.0, 0.0, 0.0, 0.5]])
    out = metrics.retrieval_recall(scores, TEXT_IMAGE, ks=(1,))
    assert out == pytest.approx({'t2i_r1': 50.0, 'i2t_r1': 200 / 3})
    np.testing.assert_array_equal(metrics.top_k_indices(np.array([[nan, 1.0, -inf, 2.0]]), 4),
                                  [[3, 1, 0, 2]])
    # A NaN second-stage score falls below every first-stage one.
    reranked = metrics.rerank_top_k(np.array([[0.5], [0.9], [0.1]]), np.array([[1, 0]]),
                                    np.array([[nan, 0.3]]), axis=1)
    assert list(np.argsort(-reranked[:, 0], kind='stable')) == [0, 2, 1]


def test_top1_and_answer_ranking_ties_and_nan_count_against_the_model():
    # Row 0 NaN at the label; row 1 a tie at the top; row 2 NaN elsewhere, label right.
    logits = np.array([[np.nan, 0.0], [1.0, 1.0], [2.0, np.nan]])
    assert metrics.top1_accuracy(logits, np.array([0, 0, 0])) == pytest.approx(100 / 3)
    # A tie between answers of credit 1 and 0.3 earns 0.3; all-NaN scores earn the least (0).
    scores = np.array([[0.5, 0.5, 0.1], [np.nan, np.nan, np.nan]])
    credit = np.array([[1.0, 0.3, 0.0], [1.0, 0.6, 0.0]])
    assert metrics.ranked_answer_accuracy(scores, credit) == pytest.approx(15.0)


def test_nonfinite_report():
    assert metrics.nonfinite('retrieval', a=np.ones(3), b=np.zeros((2, 2))) == {}
    assert metrics.nonfinite('retrieval', a=np.array([np.nan, 1.0, np.inf]),
                             b=np.array([[-np.inf]])) == {'nonfinite': 3.0}
