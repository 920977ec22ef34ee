"""What the programs write to TensorBoard, under tag names shared by train, evaluate and finetune:

    train/<metric>              the update step's metrics (losses, accuracies, grad_norm, ...),
                                each averaged over its logging window (train, finetune)
    train/<x>itm_prior_*        ITM's prior, constant, beside every ``train/<x>itm_loss``
    eval/<evaluator>/<metric>   held-out evaluation (``evaluators.runner``: train, evaluate;
                                finetune: ``eval/<task>/<metric>``), galleries as images there
    steps_per_sec, uptime       clu's ``ReportProgress`` (all three programs)

``xfm_jax.curves`` reads these tags back into a PNG.
"""

from __future__ import annotations

import math

from clu import metrics as clu_metrics
import jax
import numpy as np

from xfm_jax.objectives import itm

TRAIN, EVAL = 'train/', 'eval/'


@jax.jit
def _merge(window: dict, metrics: dict) -> dict:
    return {name: window[name].merge(clu_metrics.Average.from_model_output(value))
            for name, value in metrics.items()}


class WindowAverage:
    """The mean of each step metric over a logging window (``clu.metrics.Average``), summed on
    the devices by one jitted merge per step: the host reads it once per window."""

    def __init__(self):
        self._window = None

    def add(self, metrics: dict) -> None:
        """Adds one step's ``{name: scalar array}``; every step must give the same names."""
        if self._window is None:
            self._window = {name: clu_metrics.Average.empty() for name in metrics}
        self._window = _merge(self._window, metrics)

    def result(self) -> dict[str, float]:
        """The means of the steps added since the last :meth:`reset` ({} before any)."""
        if self._window is None:
            return {}
        totals = jax.device_get({k: (m.total, m.count) for k, m in self._window.items()})
        return {k: float(total) / float(count) for k, (total, count) in totals.items()}

    def reset(self) -> None:
        self._window = None


def itm_prior(negatives: int = itm.NEGATIVES_PER_POSITIVE) -> dict[str, float]:
    """What ITM scores without looking at the pair, with 1 positive : ``negatives`` negatives:
    ``prior_accuracy`` (always 'no match') and ``prior_loss``, the cross-entropy of predicting
    the label frequencies, i.e. the entropy of the split (0.6365 for 2 negatives)."""
    p = 1.0 / (negatives + 1)
    return {'prior_accuracy': 1.0 - p,
            'prior_loss': -(p * math.log(p) + (1 - p) * math.log(1 - p))}


def with_itm_prior(metrics: dict) -> dict:
    """``metrics`` with ``<x>itm_prior_loss`` and ``<x>itm_prior_accuracy`` beside every
    ``<x>itm_loss`` (``image_text/itm_loss`` in pre-training, ``itm_loss`` in fine-tuning)."""
    out = dict(metrics)
    for name in metrics:
        if name.endswith('itm_loss'):
            out.update({f'{name[:-len("loss")]}{k}': v for k, v in itm_prior().items()})
    return out


def prefixed(prefix: str, scalars: dict) -> dict[str, float]:
    return {prefix + name: float(np.asarray(value)) for name, value in scalars.items()}
