r"""VQA as classification over the answers on the fusion [CLS] (synthetic scenes: 13 answers).

Run:  python -m xfm_jax.finetune --config=configs/finetune/vqa.py:tiny --workdir=DIR \
          [--init=PRETRAIN_WORKDIR] [--config.task.source=easy_vqa]
Expect (tiny, 500 steps, ~80 s on 2 CPU cores): 25.5 % from random init, 25.9 % from the
runlocal checkpoint, 10.7 % chance (commonest training answer); docs/finetune.md. Paper: VQA v2 79.1 (generative).
"""

from configs.finetune import base


def get_config(arg: str = ''):
    tiny = arg == 'tiny'
    return base.finetune_config(
        'vqa', arg, source='xfm_synthetic_scenes' if tiny else 'xfm_synthetic_scenes_224',
        text_len=16 if tiny else 40, num_answers=0)
