"""Evaluator tests: a tiny run config over the synthetic scenes, built offline into a tmp dir."""

import pytest


@pytest.fixture(scope='session')
def eval_config(tmp_path_factory):
    """configs/xfm_base.py:runlocal (tiny model) with data in a tmp dir and tiny eval sets."""
    from configs import xfm_base
    from xfm_jax import evaluators
    from xfm_jax.data import tasks
    path = str(tmp_path_factory.mktemp('tfds'))
    tasks.load_builder(tasks.SOURCES['xfm_synthetic_scenes'], path)
    config = xfm_base.get_config('runlocal')
    config.data.tfds_data_dir = path
    config.data.vocab.path = f'{path}/vocab.txt'
    config.evaluate = evaluators.evaluate_config('runlocal')
    config.evaluate.batch_size = 8
    for name in ('retrieval', 'zero_shot_classification', 'grounding'):
        config.evaluate[name].max_images = 12  # not a multiple of the batch: exercises padding
    config.evaluate.linear_probe.update(max_train_images=24, max_test_images=12, steps=50)
    return config


@pytest.fixture(scope='session')
def random_arrays():
    """``fn(abstract tree, shardings) -> arrays``: N(0, 0.02) values of the abstract shapes and
    dtypes on the shardings. Much faster than compiling the model's init for 8 devices, and any
    values serve tests that compare two routes to the same numbers."""
    import flax.linen as nn
    import jax
    import numpy as np

    def fill(abstract, shardings):
        rng = np.random.default_rng(0)
        return jax.tree.map(
            lambda x, s: jax.device_put(rng.normal(0, 0.02, x.shape).astype(x.dtype), s),
            nn.unbox(abstract), shardings)
    return fill
