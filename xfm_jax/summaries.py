"""What the programs write to TensorBoard, under tag names shared by train, evaluate and finetune:

    train/<metric>              the update step's metrics (losses, accuracies, grad_norm, ...),
                                each averaged over its logging window (train, finetune)
    train/<stream>/<objective>_loss/<source>
                                a mixed stream's loss on one source's rows, row-weighted over
                                the window (``by_source``; train)
    train/<x>itm_prior_*        ITM's prior, constant, beside every ``train/<x>itm_loss``
    eval/<evaluator>/<metric>   held-out evaluation (``evaluators.runner``: train, evaluate;
                                finetune: ``eval/<task>/<metric>``), galleries as images there
    steps_per_sec, uptime       clu's ``ReportProgress`` (all three programs)

``xfm_jax.curves`` reads these tags back into a PNG.
"""

from __future__ import annotations

import math
from typing import Sequence

from clu import metrics as clu_metrics
import jax
import jax.numpy as jnp
import numpy as np

from xfm_jax.objectives import itm

TRAIN, EVAL = 'train/', 'eval/'


def by_source(name: str, rows, source, sources: Sequence[str]) -> dict:
    """``{name/<source>: clu Average}``: each source's share of a loss, ``total`` the weighted
    sum of its rows' losses and ``count`` their weights (``objectives.RowLosses``), so a window
    sums them and a source absent from a step adds nothing. ``source`` [B]: each batch row's
    index into ``sources``; row r of the R rows belongs to batch row r // (R // B)."""
    row_source = jnp.repeat(source, rows.loss.shape[0] // source.shape[0])
    out = {}
    for index, source_name in enumerate(sources):
        weight = jnp.where(row_source == index, rows.weight, 0.0)
        out[f'{name}/{source_name}'] = clu_metrics.Average(
            total=jnp.where(weight > 0, weight * rows.loss, 0.0).sum(), count=weight.sum())
    return out


def _average(value) -> clu_metrics.Average:
    """A step metric as a clu Average: as given (``by_source``), or a scalar counted once."""
    if isinstance(value, clu_metrics.Average):
        return value
    return clu_metrics.Average.from_model_output(value)


@jax.jit
def _merge(window: dict | None, metrics: dict) -> dict:
    step = {name: _average(value) for name, value in metrics.items()}
    if window is None:
        return step
    return {name: window[name].merge(average) for name, average in step.items()}


def means(metrics: dict) -> dict[str, float]:
    """``{name: float}`` of step metrics or window Averages: an Average as total / count,
    left out when its count is 0 (a source with no rows)."""
    out = {}
    for name, value in jax.device_get(metrics).items():
        if isinstance(value, clu_metrics.Average):
            if value.count:
                out[name] = float(value.total) / float(value.count)
        else:
            out[name] = float(value)
    return out


class WindowAverage:
    """The mean of each step metric over a logging window (``clu.metrics.Average``), summed on
    the devices by one jitted merge per step: the host reads it once per window. A scalar
    metric counts once per step; a ``by_source`` one by its rows' weights."""

    def __init__(self):
        self._window = None

    def add(self, metrics: dict) -> None:
        """Adds one step's ``{name: scalar array or Average}``; every step must give the same
        names."""
        self._window = _merge(self._window, metrics)

    def result(self) -> dict[str, float]:
        """The means of the steps added since the last :meth:`reset` ({} before any); a
        source with no rows in the window has none."""
        if self._window is None:
            return {}
        return means(self._window)

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
