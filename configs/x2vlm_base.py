r"""X²-VLM base (arXiv 2211.12402): BEiT-2 ViT-B/16 + one 18-layer BERT-base stack
(layers 0-11 text, 12-17 fusion), ~254.8M params.

Run:  python -m xfm_jax.train --config=configs/x2vlm_base.py --workdir=DIR
Tiny: --config=configs/x2vlm_base.py:tiny
"""

from configs import common


def get_config(arg: str = ''):
    import ml_collections
    config = ml_collections.ConfigDict()
    config.model = common.model_config(
        'x2vlm', common.vision_config(use_mask_token=False), common.bert_config(), fusion_depth=6)
    if arg == 'tiny':
        common.tiny_model(config.model)
    elif arg:
        raise ValueError(f"Unknown preset {arg!r} for x2vlm_base; expected '' or 'tiny'.")
    return config
