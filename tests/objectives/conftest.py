"""Tiny models, parameters and synthetic batches shared by the objective tests."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import x2vlm_base, xfm_base
from xfm_jax import streams
from xfm_jax.models.model import build_model, init_variables

_CONFIGS = {'xfm': xfm_base, 'x2vlm': x2vlm_base}


@functools.lru_cache(maxsize=None)
def _tiny(family: str, stop_gradient_text: bool):
    config = _CONFIGS[family].get_config('tiny')
    config.objectives.itm.negative_groups = 1  # one device's view: the whole batch is local
    default = config.model.stop_gradient_text
    config.model.stop_gradient_text = stop_gradient_text
    model = build_model(config.model)
    if stop_gradient_text != default:  # the switch changes no parameter: reuse the default's
        return config, model, _tiny(family, default)[2]
    # jit: an eager init dispatches op by op and takes several times longer.
    params = jax.jit(lambda rng: nn.unbox(init_variables(model, rng))['params'])(jax.random.key(0))
    return config, model, params


@pytest.fixture(scope='session')
def tiny():
    """``tiny(family, stop_gradient_text=None) -> (config, model, params)``, cached; None keeps
    the family's default (X-FM on, X²-VLM off)."""
    def get(family, stop_gradient_text=None):
        if stop_gradient_text is None:
            stop_gradient_text = family == 'xfm'
        return _tiny(family, stop_gradient_text)
    return get


def _make_batch(config, stream: str, *, batch: int = 4, text_len: int = 8, region_texts: int = 2,
               seed: int = 0) -> dict:
    text, vision = config.model.text, config.model.vision
    # The tiny RoBERTa keeps the full-size <mask> id (50264) but a 512-entry table: mask with an
    # in-range id so masked positions do not look up past the embedding table.
    mask_id = text.mask_id if text.mask_id < text.vocab_size else text.vocab_size - 1
    return streams.synthetic_batch(
        stream, np.random.default_rng(seed), vocab_size=text.vocab_size, pad_id=text.pad_id,
        mask_id=mask_id, num_masked_patches=config.objectives.mim.num_masked,
        image_size=vision.image_size, patch_size=vision.patch_size, batch=batch,
        text_len=text_len, region_texts=region_texts, frames=max(config.model.video_frames, 1))


@pytest.fixture(scope='session')
def make_batch():
    """``make_batch(config, stream, *, batch=4, text_len=8, region_texts=2, seed=0)`` -> numpy
    batch of ``xfm_jax.streams.synthetic_batch``."""
    return _make_batch
