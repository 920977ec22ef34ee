r"""X-FM base (arXiv 2301.05065): BEiT-2 ViT-B/16 + RoBERTa-base + 12-layer fusion, ~327M params.

Run (main job on a pod):  python -m xfm_jax.train --config=configs/xfm_base.py --workdir=DIR
Tiny (tests, CPU):         --config=configs/xfm_base.py:tiny
"""

from configs import common


def get_config(arg: str = ''):
    model = common.model_config(
        'xfm', common.vision_config(), common.roberta_config(), fusion_depth=12)
    return common.run_config('xfm', model, arg)
