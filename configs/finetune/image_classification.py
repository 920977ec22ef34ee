r"""Image classification, full fine-tuning of the vision encoder + MLP on token 0 (synthetic
scenes: the largest shape, 4 classes; Fashion-MNIST with --config.task.source=fashion_mnist).

Run:  python -m xfm_jax.finetune --config=configs/finetune/image_classification.py:tiny \
          --workdir=DIR [--init=PRETRAIN_WORKDIR] [--config.train.trainable=head]
Expect (tiny, 500 steps): far above the commonest-class chance level. Paper: ImageNet 85.3.
"""

from configs.finetune import base


def get_config(arg: str = ''):
    tiny = arg == 'tiny'
    return base.finetune_config(
        'image_classification', arg,
        source='xfm_synthetic_scenes' if tiny else 'xfm_synthetic_scenes_224', text_len=16)
