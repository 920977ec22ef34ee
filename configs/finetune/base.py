"""Shared part of the fine-tuning configs (configs/finetune/<task>.py); keys mirror the program.

``finetune_config(task, arg, source=..., **task_fields)`` returns the X-FM base model (or, with
``arg='tiny'``, the same tiny model as ``configs/xfm_base.py:runlocal``) for runs without
``--init`` (with ``--init`` the checkpoint's own model, family and sizes, and vocabulary replace
them), with the language stop-gradient off, the data config (vocabulary, TFDS directory, sources),
``task`` (the task's data and its settings), ``optimizer`` (the pre-training AdamW with a
fine-tuning learning rate, the new head x5), ``train`` and ``evaluate``.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs import data as data_configs
from xfm_jax import compilation

PRESETS = ('', 'tiny')


def finetune_config(task: str, arg: str, *, source: str, text_len: int,
                    **task_fields) -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise ValueError(f'Unknown fine-tuning preset {arg!r}; expected one of {PRESETS}.')
    tiny = arg == 'tiny'
    config = ml_collections.ConfigDict()
    config.model = common.model_config('xfm', common.vision_config(), common.roberta_config(),
                                       fusion_depth=12)
    if tiny:
        common.tiny_model(config.model)
    # Fine-tuning removes X-FM's stop-gradient: fusion losses train the language encoder too.
    config.model.stop_gradient_text = False
    config.data = data_configs.data_config('synthetic_tiny' if tiny else 'synthetic', config.model)
    max_len = config.model.text.max_positions - 2  # RoBERTa's positions start at 2
    text_len = min(text_len, max_len)
    config.data.streams.image_text.text_len = text_len  # read by the image-text readers
    config.task = dict(
        name=task,
        source=source,
        train_split='train',
        eval_split='validation',
        max_train=0,  # 0: the whole split (images for image tasks, texts for text tasks)
        max_eval=0,
        text_len=text_len,
        **task_fields,
    )
    config.partitioning = common.partitioning_config()
    config.train = dict(
        total_steps=500 if tiny else 10_000,
        batch_size=32 if tiny else 256,  # global
        eval_batch_size=64 if tiny else 256,
        trainable='all',  # 'all' | 'head' (backbone frozen)
        seed=0,
        log_every=50 if tiny else 100,
        eval_every=0,  # 0: evaluate at the end only
        save_params=True,  # the fine-tuned params in workdir/params (finetune.save_params)
        compilation_cache_dir=compilation.DEFAULT_CACHE_DIR,  # '' off; local or gs://
    )
    config.optimizer = common.optimizer_config()
    config.optimizer.update(
        learning_rate=5e-4 if tiny else 5e-5,
        # 10 % of the run, following --config.train.total_steps overrides.
        warmup_steps=config.train.get_ref('total_steps') // 10,
        lr_multipliers='^head/=5',  # the newly initialised task head
    )
    from xfm_jax import evaluators
    config.evaluate = evaluators.evaluate_config('tiny' if tiny else '')
    return config
