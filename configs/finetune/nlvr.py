r"""NLVR2-style: one statement about two images ("the left image shows a small red circle"),
each image fused separately, concatenated fusion [CLS] -> MLP -> true / false.

Run:  python -m xfm_jax.finetune --config=configs/finetune/nlvr.py:tiny --workdir=DIR \
          [--init=PRETRAIN_WORKDIR]
Expect (tiny, 500 steps): above the ~50 % chance level. Paper: NLVR2 test-P 86.5.
"""

from configs.finetune import base


def get_config(arg: str = ''):
    tiny = arg == 'tiny'
    return base.finetune_config(
        'nlvr', arg, source='xfm_synthetic_scenes' if tiny else 'xfm_synthetic_scenes_224',
        text_len=16 if tiny else 30, pairs_per_image=4)
