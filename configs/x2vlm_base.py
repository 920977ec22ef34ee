r"""X²-VLM base (arXiv 2211.12402): BEiT-2 ViT-B/16 + one 18-layer BERT-base stack
(layers 0-11 text, 12-17 fusion), ~254.8M params.

Run:  python -m xfm_jax.train --config=configs/x2vlm_base.py --workdir=DIR
Tiny: --config=configs/x2vlm_base.py:tiny
"""

from configs import common


def get_config(arg: str = ''):
    model = common.model_config(
        'x2vlm', common.vision_config(use_mask_token=False), common.bert_config(), fusion_depth=6)
    return common.run_config('x2vlm', model, arg)
