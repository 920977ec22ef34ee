"""Evaluators, looked up by name. Each module has ``evaluate(ctx, settings) -> {metric: float}``
(``ctx``: ``batching.EvalContext``; ``settings``: ``config.evaluate.<name>``).

    retrieval                 zero-shot image<->text retrieval, ITC then ITM re-ranking
    zero_shot_classification  images against one text prompt per class name (ITC)
    linear_probe              logistic regression on frozen image features
    mlp_probe                 a one-hidden-layer MLP on frozen image features (X-FM's protocol)
    grounding                 box head over (image, phrase): accuracy at IoU >= threshold
    video_retrieval           zero-shot video<->text retrieval (X²-VLM), ITC then ITM re-ranking

This module imports only ml_collections: configs may call :func:`evaluate_config`.
"""

from __future__ import annotations

import importlib

import ml_collections

NAMES = ('retrieval', 'zero_shot_classification', 'linear_probe', 'mlp_probe', 'grounding',
         'video_retrieval')
VIDEO = ('video_retrieval',)  # need a model with a video path (model.video_frames > 0)


class SourceLacks(ValueError):
    """An evaluator's source has no field (labels, boxes) or split (a user source without a
    ``validation_path``) the evaluator needs: the runner skips that evaluator with a warning
    naming the source instead of failing the evaluation."""


def get(name: str):
    """The ``evaluate`` function of the evaluator ``name``."""
    if name not in NAMES:
        raise ValueError(f'config.evaluate.evaluators names unknown evaluator {name!r}; '
                         f'known: {NAMES}.')
    return importlib.import_module(f'{__name__}.{name}').evaluate


def parse_names(names: str) -> list[str]:
    """'a, b,' -> ['a', 'b'] (the comma-separated evaluator lists of ``config.evaluate``)."""
    return [n.strip() for n in names.split(',') if n.strip()]


def check_names(names: str, settings: ml_collections.ConfigDict, key: str) -> list[str]:
    """:func:`parse_names`, each name checked: a known evaluator with a settings section in
    ``settings`` (``config.evaluate``). ``key`` names the config value in the error."""
    parsed = parse_names(names)
    for name in parsed:
        if name not in NAMES:
            raise ValueError(f'{key} names unknown evaluator {name!r}; known: {NAMES}.')
        if name not in settings:
            raise ValueError(f'{key} names {name!r}, which has no settings section '
                             f'config.evaluate.{name}.')
    return parsed


def evaluate_config(arg: str = '', video: bool = False) -> ml_collections.ConfigDict:
    """``config.evaluate``: which evaluators run and their settings.

    ``arg``: the run preset ('' | 'tiny' | 'runlocal'); the tiny presets shrink the sets and
    the re-ranking depth. ``video``: the model has a video path, so the video evaluators run by
    default. ``source: ''`` means the first source of the run's
    ``data.streams.image_text.mixture`` (video: ``data.streams.video.mixture``);
    ``max_images: 0`` means the whole split. ``during_training``: the evaluators a training run
    runs every ``train.eval_every`` steps (the end of the run runs ``evaluators``).
    """
    tiny = arg in ('tiny', 'mini', 'runlocal', 'runlocal_real')
    split = dict(source='', split='validation', max_images=0)
    probe = dict(source='', train_split='train', test_split='validation',
                 max_train_images=400 if tiny else 5000, max_test_images=0,
                 steps=200 if tiny else 1000, learning_rate=0.1, weight_decay=1e-4)
    return ml_collections.ConfigDict(dict(
        # comma-separated: one command-line override
        evaluators=','.join(n for n in NAMES if video or n not in VIDEO),
        during_training='retrieval' + (',video_retrieval' if video else ''),  # the cheap ones
        batch_size=16 if tiny else 256,  # global; rounded up to a multiple of the batch shards
        retrieval=dict(**split, k=4 if tiny else 16, gallery_queries=8),
        zero_shot_classification=dict(**split, prompt='a picture of a {}'),
        linear_probe=probe,
        mlp_probe=dict(probe, learning_rate=1e-3, hidden_dim=64 if tiny else 1024,
                       val_fraction=0.1, eval_every=20 if tiny else 50),
        grounding=dict(**split, iou_threshold=0.5, gallery_phrases=8),
        video_retrieval=dict(source='', split='validation', max_videos=0,
                             k=4 if tiny else 16),
    ))
