r"""VQA on the fusion encoder: an answer classifier on the fusion [CLS] (``task.head=classifier``)
or X-FM's generative answer decoder initialised from the fusion encoder, candidates ranked by
likelihood (``task.head=generative``); synthetic scenes: 13 answers.

Run:  python -m xfm_jax.finetune --config=configs/finetune/vqa.py:tiny --workdir=DIR \
          [--init=PRETRAIN_WORKDIR] [--config.task.source=easy_vqa] \
          [--config.task.head=generative]
Expect (tiny, 500 steps, ~80 s on 2 CPU cores): classifier 25.5 % from random init, 25.9 % from
the runlocal checkpoint, 10.7 % chance (commonest training answer); docs/finetune.md has the
generative figures. Paper: VQA v2 79.1 (generative).
"""

from configs.finetune import base


def get_config(arg: str = ''):
    tiny = arg == 'tiny'
    return base.finetune_config(
        'vqa', arg, source='xfm_synthetic_scenes' if tiny else 'xfm_synthetic_scenes_224',
        text_len=16 if tiny else 40, num_answers=0,
        head='classifier',  # 'classifier' | 'generative'
        answer_len=12 if tiny else 10,  # decoder tokens: cls answer sep, then >= 1 pad
        rank_k=0 if tiny else 128,  # 0: every candidate's full likelihood; k: ALBEF's top-k
        gallery_questions=8,  # rows of vqa_gallery_step{N}.png in the workdir; 0: none
    )
