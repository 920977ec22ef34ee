"""Fine-tuning tasks, looked up by name (``config.task.name``). Each module has

    read(config, split, max_examples) -> common.Examples      host numpy rows (+ shared images)
    build(config, model, train_set, *, batch_shards) -> nn.Module
        a task model wrapping the VisionLanguageModel as its child ``model`` (params
        {'model': ..., 'head': ...}); ``__call__(batch)`` -> predictions,
        ``loss(batch, train=True)`` -> (loss, metrics)
    evaluate(run, eval_set, train_set) -> {metric: float}     'chance/<metric>' = its chance level
    params_from_backbone(config, params) -> {name: params}    optional: task params that start
        as a copy of the restored backbone (the generative VQA decoder)

    text_classification   GLUE-style classification / regression, language encoder + MLP on <s>
    vqa                   answer classification on the fusion [CLS], or a generative answer
                          decoder initialised from the fusion encoder (task.head)
    image_classification  full fine-tuning of the vision encoder + MLP on token 0
    nlvr                  two images fused separately with one statement, concatenated [CLS] -> MLP
    retrieval             ITC with image-id soft targets + ITM; scored by the retrieval evaluator
"""

from __future__ import annotations

import importlib

NAMES = ('text_classification', 'vqa', 'image_classification', 'nlvr', 'retrieval')


def get(name: str):
    """The task module ``name``."""
    if name not in NAMES:
        raise ValueError(f'config.task.name {name!r} is no fine-tuning task; known: {NAMES}.')
    return importlib.import_module(f'{__name__}.{name}')
