"""Fine-tuning tests: tiny configs over the synthetic scenes, built offline into a tmp dir."""

import importlib

import pytest


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
    from xfm_jax.data import tasks
    path = str(tmp_path_factory.mktemp('tfds'))
    tasks.load_builder(tasks.SOURCES['xfm_synthetic_scenes'], path)
    return path


@pytest.fixture
def tiny_config(data_dir):
    """``fn(task config module name, **train overrides)``: its :tiny preset on ONE batch of 8
    training rows (repeated every step: the loss must fall fast), 40 steps logged each; the
    params are not saved (a save costs seconds; test_vqa_generative.py tests it)."""
    def make(name, **train):
        config = importlib.import_module(f'configs.finetune.{name}').get_config('tiny')
        config.data.tfds_data_dir = data_dir
        config.data.vocab.path = f'{data_dir}/vocab.txt'
        # max_train counts images: VQA has ~4 questions per image, NLVR 4 pairs per image.
        config.task.update(max_train={'vqa': 3, 'nlvr': 2}.get(name, 8), max_eval=8)
        config.train.update(dict(total_steps=40, batch_size=8, eval_batch_size=8, log_every=1,
                                 save_params=False),
                            **train)
        config.optimizer.learning_rate = 2e-3
        return config
    return make
