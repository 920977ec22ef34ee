r"""X²-VLM large: ViT-L/16 (24 x 1024, 16 heads) + 18-layer 1024-wide BERT stack, ~593M params.

Run:  python -m xfm_jax.train --config=configs/x2vlm_large.py --workdir=DIR
"""

from configs import common


def get_config(arg: str = ''):
    model = common.model_config(
        'x2vlm',
        common.vision_config(width=1024, depth=24, num_heads=16, use_mask_token=False),
        common.bert_config(width=1024, num_heads=16),
        fusion_depth=6)
    return common.run_config('x2vlm', model, arg)
