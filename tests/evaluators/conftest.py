"""Evaluator tests: a tiny run config over the synthetic scenes, built offline into a tmp dir."""

import pytest


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
    """One tmp TFDS data dir: each synthetic set is built there once per session."""
    return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def eval_config(tfds_dir):
    """configs/xfm_base.py:runlocal (tiny model) with data in a tmp dir and tiny eval sets."""
    from configs import xfm_base
    from xfm_jax import evaluators
    from xfm_jax.data import tasks
    path = tfds_dir
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
def video_eval_config(tfds_dir):
    """configs/x2vlm_base.py:runlocal (tiny model, 2 video frames) over the synthetic clips."""
    from configs import x2vlm_base
    from xfm_jax.data import tasks
    tasks.load_builder(tasks.SOURCES['xfm_synthetic_clips'], tfds_dir)
    config = x2vlm_base.get_config('runlocal')
    config.data.tfds_data_dir = tfds_dir
    config.data.vocab.path = f'{tfds_dir}/vocab_x2vlm.txt'  # BERT ids: another layout than X-FM
    config.evaluate.batch_size = 8
    config.evaluate.video_retrieval.max_videos = 12  # of 30: the last batch is padded
    return config


@pytest.fixture(scope='session')
def random_arrays():
    """``fn(abstract tree, shardings, std=0.02, init_like=False) -> arrays``: N(0, std) values of
    the abstract shapes and dtypes on the shardings (``init_like``: every 'scale' 1 and 'bias'
    0, as at initialisation, so that activations keep their size through the layers). Much
    faster than compiling the model's init for 8 devices, and any values serve tests that
    compare two routes to the same numbers."""
    import flax.linen as nn
    import jax
    import numpy as np

    def fill(abstract, shardings, std=0.02, init_like=False):
        rng = np.random.default_rng(0)

        def value(path, x):
            name = path[-1].key if init_like else ''
            if name in ('scale', 'bias'):
                return np.full(x.shape, float(name == 'scale'), x.dtype)
            return rng.normal(0, std, x.shape).astype(x.dtype)
        return jax.tree.map(lambda v, s: jax.device_put(v, s),
                            jax.tree_util.tree_map_with_path(value, nn.unbox(abstract)),
                            shardings)
    return fill
