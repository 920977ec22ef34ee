r"""NLVR2-style: one statement about two images ("the left image shows a small red circle"),
each image fused separately, concatenated fusion [CLS] -> MLP -> true / false.

Run (pairs made from the synthetic scenes):
    python -m xfm_jax.finetune --config=configs/finetune/nlvr.py:tiny --workdir=DIR \
        [--init=PRETRAIN_WORKDIR]
Run on NLVR2 (the official JSON files and images; docs/data.md, format ``nlvr2``):
    python -m xfm_jax.finetune --config=configs/finetune/nlvr.py --workdir=DIR --init=CKPT \
        --config.task.source=nlvr2 \
        --config.data.user_sources.nlvr2.path=/data/nlvr2/data/train.json \
        --config.data.user_sources.nlvr2.validation_path=/data/nlvr2/data/dev.json \
        --config.data.user_sources.nlvr2.image_root=/data/nlvr2/images
Expect (tiny, 500 steps): above the ~50 % chance level. Paper: NLVR2 test-P 86.5.
"""

from configs.finetune import base


def get_config(arg: str = ''):
    tiny = arg == 'tiny'
    config = base.finetune_config(
        'nlvr', arg, source='xfm_synthetic_scenes' if tiny else 'xfm_synthetic_scenes_224',
        text_len=16 if tiny else 30, pairs_per_image=4)
    # Declared so the command line can point it at the files; built only when task.source names
    # it (an empty path is an error then).
    config.data.user_sources = {'nlvr2': {'format': 'nlvr2', 'path': '', 'validation_path': '',
                                          'image_root': ''}}
    return config
