"""Evaluation metrics as pure numpy functions (no jax, no TensorFlow).

Ties count against the model: a right candidate is ranked behind every wrong one scoring at least
as high, so a constant scorer gets chance-level (not perfect) recall. Non-finite scores (NaN, inf)
rank last: a broken model never scores well; evaluators report them with :func:`nonfinite`.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import logging
import numpy as np


def finite_scores(scores) -> np.ndarray:
    """float64 copy of ``scores`` with NaN and +-inf as -inf, so they rank below every real
    score (NaN compares False with everything and would otherwise win every comparison)."""
    scores = np.asarray(scores, np.float64)
    return np.where(np.isfinite(scores), scores, -np.inf)


def nonfinite(evaluator: str, **outputs) -> dict[str, float]:
    """{} when every model output is finite; otherwise logs one error line naming the evaluator
    and the outputs holding NaN or inf, and returns ``{'nonfinite': their count}``, which the
    evaluator reports instead of its metrics."""
    counts = {name: int(np.size(value) - np.isfinite(value).sum())
              for name, value in outputs.items()}
    bad = {name: n for name, n in counts.items() if n}
    if not bad:
        return {}
    logging.error('%s: the model produced non-finite values (%s); no metrics reported.',
                  evaluator, ', '.join(f'{name}: {n}' for name, n in bad.items()))
    return {'nonfinite': float(sum(bad.values()))}


def ranks_of_best_right(scores: np.ndarray, right: np.ndarray) -> np.ndarray:
    """scores, right: [Q, C] (right: bool, >= 1 per row) -> [Q] int: how many wrong candidates
    score at least as high as the best right one (0 = the first hit is at the top)."""
    if not right.any(axis=1).all():
        raise ValueError('every query needs at least one right candidate')
    scores = finite_scores(scores)
    best = np.where(right, scores, -np.inf).max(axis=1, keepdims=True)
    return ((scores >= best) & ~right).sum(axis=1)


def retrieval_recall(similarity: np.ndarray, text_image: np.ndarray,
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K in both directions, in percent.

    Args:
      similarity: [num_images, num_texts] scores, higher = better match.
      text_image: [num_texts] int, the index of the image each text describes (an image may have
        several texts).
    Returns:
      ``t2i_r{K}``: texts whose true image is among their top K images;
      ``i2t_r{K}``: images with any of their texts among their top K texts.
    """
    similarity = finite_scores(similarity)
    num_images, num_texts = similarity.shape
    text_image = np.asarray(text_image)
    if text_image.shape != (num_texts,):
        raise ValueError(f'text_image has shape {text_image.shape}, expected ({num_texts},)')
    right = text_image[None, :] == np.arange(num_images)[:, None]  # [I, T]
    t2i = ranks_of_best_right(similarity.T, right.T)
    i2t = ranks_of_best_right(similarity, right)
    out = {}
    for k in ks:
        out[f't2i_r{k}'] = 100.0 * float(np.mean(t2i < k))
        out[f'i2t_r{k}'] = 100.0 * float(np.mean(i2t < k))
    return out


def retrieval_chance(text_image: np.ndarray, num_images: int,
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected recall@K (percent) of a random ranking, keyed like :func:`retrieval_recall`.

    Text->image: K / num_images. Image->text, for an image with c of the T texts: the chance that
    K texts drawn without replacement include one of its c, 1 - prod_{j<c} (T-K-j) / (T-j).
    """
    text_image = np.asarray(text_image)
    num_texts = len(text_image)
    counts = np.bincount(text_image, minlength=num_images)
    out = {}
    for k in ks:
        out[f't2i_r{k}'] = 100.0 * min(1.0, k / num_images)
        miss = [np.prod([max(0, num_texts - k - j) / (num_texts - j) for j in range(c)])
                for c in counts]
        out[f'i2t_r{k}'] = 100.0 * float(np.mean(1.0 - np.asarray(miss)))
    return out


def rerank_top_k(similarity: np.ndarray, top_k: np.ndarray, top_k_scores: np.ndarray,
                 axis: int) -> np.ndarray:
    """Replaces each query's top-K candidate scores by new ones that rank above all the others.

    Args:
      similarity: [num_images, num_texts] first-stage scores.
      top_k: int [Q, K] candidate indices per query; queries run along ``axis`` (0: image queries
        choose texts, 1: text queries choose images).
      top_k_scores: [Q, K] the second-stage scores (e.g. ITM match probabilities) of those.
    Returns: a [num_images, num_texts] score matrix in which the top-K candidates are ordered by
    ``top_k_scores`` and the rest follow in their first-stage order.
    """
    scores = np.moveaxis(finite_scores(similarity), axis, 0)  # [Q, C]
    rows = np.arange(scores.shape[0])[:, None]
    top_k_scores = finite_scores(top_k_scores)
    # Shift the first-stage scores below the smallest second-stage score, keeping their order
    # (non-finite ones stay -inf, last).
    shift = (top_k_scores[np.isfinite(top_k_scores)].min(initial=0.0) - 1.0
             - scores[np.isfinite(scores)].max(initial=0.0))
    out = scores + shift
    out[rows, top_k] = top_k_scores
    return np.moveaxis(out, 0, axis)


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """[Q, C] -> int [Q, min(k, C)] indices of the highest scores, best first."""
    k = min(k, scores.shape[1])
    scores = finite_scores(scores)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind='stable')
    return np.take_along_axis(part, order, axis=1)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of paired boxes [..., 4] given as (cx, cy, w, h) -> [...]."""
    a, b = np.asarray(boxes_a, np.float64), np.asarray(boxes_b, np.float64)

    def corners(box):
        return box[..., :2] - box[..., 2:] / 2, box[..., :2] + box[..., 2:] / 2

    (a0, a1), (b0, b1) = corners(a), corners(b)
    inter = np.prod(np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None), axis=-1)
    union = np.prod(a[..., 2:], axis=-1) + np.prod(b[..., 2:], axis=-1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def iou_accuracy(predicted: np.ndarray, target: np.ndarray, threshold: float = 0.5,
                 valid: np.ndarray | None = None) -> float:
    """Percent of (valid) boxes with IoU >= ``threshold``; boxes [N, 4] as (cx, cy, w, h)."""
    hits = box_iou(predicted, target) >= threshold
    valid = np.ones(hits.shape, bool) if valid is None else np.asarray(valid, bool)
    if not valid.any():
        raise ValueError('iou_accuracy: no valid boxes')
    return 100.0 * float(hits[valid].mean())


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Percent of rows whose label's logit is above every other (a tie or a non-finite logit
    at the label counts as wrong); logits [N, C], labels int [N]."""
    logits = finite_scores(logits)
    rows = np.arange(len(logits))
    label_logit = logits[rows, np.asarray(labels)]
    others = logits.copy()
    others[rows, np.asarray(labels)] = -np.inf
    return 100.0 * float(np.mean(label_logit > others.max(axis=-1)))


def ranked_answer_accuracy(scores: np.ndarray, answer_credit: np.ndarray) -> float:
    """Answer ranking: each question takes its best-scored candidate answer and earns that
    answer's credit (one-hot for a single right answer, or VQA's soft min(#annotators / 3, 1)).

    Args:
      scores: [Q, A] the model's score of every candidate answer.
      answer_credit: [Q, A] credit in [0, 1] of each candidate.
    Returns: mean credit in percent; a question whose best score is tied (or all non-finite)
    earns the least credit among the tied answers.
    """
    scores = finite_scores(scores)
    tied = scores == scores.max(axis=1, keepdims=True)
    credit = np.where(tied, np.asarray(answer_credit, np.float64), np.inf).min(axis=1)
    return 100.0 * float(np.mean(credit))
