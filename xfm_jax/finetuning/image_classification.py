"""Image classification, full fine-tuning of the vision encoder (docs/design.md §12, ImageNet): an
MLP head on vision token 0 (the mean of the normed patch tokens). The frozen-feature linear probe
is an evaluator (``xfm_jax.evaluators.linear_probe``); ``train.trainable='head'`` here trains
the MLP head on frozen features instead.

Data (``config.task``): ``source`` an image-text source with a ``label`` class feature (synthetic
scenes: the largest shape, 4 classes; ``fashion_mnist``: 10 garments); ``max_train`` /
``max_eval`` count images. Metrics: ``accuracy``, ``chance/accuracy`` (commonest training class).
"""

from __future__ import annotations

import flax.linen as nn
import numpy as np

from xfm_jax.finetuning import common
from xfm_jax.models import heads
from xfm_jax.models.model import VisionLanguageModel


class ImageClassifier(nn.Module):
    """Vision encoder -> MLP head on token 0 -> [B, num_classes] logits."""
    model: VisionLanguageModel
    num_classes: int

    def setup(self):
        self.head = heads.MLPHead(self.num_classes, self.model.vision.dtype,
                                  self.model.vision.param_dtype)

    def __call__(self, batch, *, train: bool = False):
        return self.head(self.model.encode_image(batch['image'], train=train))

    def loss(self, batch, *, train: bool = True):
        return common.classification_loss(self(batch, train=train), batch['label'])


def build(config, model: VisionLanguageModel, train_set: common.Examples, *,
          batch_shards: int) -> ImageClassifier:
    del config, batch_shards
    return ImageClassifier(model, len(train_set.label_names))


def evaluate(run, eval_set: common.Examples, train_set: common.Examples) -> dict[str, float]:
    return common.score_classifier(run.predict(eval_set, 'image classification'),
                                   eval_set.rows['label'], train_set.rows['label'])


def read(config, split: str, max_examples: int) -> common.Examples:
    images = common.read_image_set(config, config.task.source, split, max_examples)
    if images.labels is None:
        raise ValueError(f'task.source {config.task.source!r} has no class labels (a '
                         "'label' feature); use xfm_synthetic_scenes or fashion_mnist.")
    return common.Examples(
        rows={'image_index': np.arange(images.num_images, dtype=np.int32),
              'label': images.labels},
        images=images.images, label_names=images.label_names)
