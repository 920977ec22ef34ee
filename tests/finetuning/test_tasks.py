"""Each task fine-tunes a few steps end to end on tiny data (8 simulated devices) and its loss
falls; restoring a checkpoint and freezing the backbone keep the stored parameters."""

import json
import os

import jax
import numpy as np
import pytest

from xfm_jax import checkpoint, curves, finetune
from xfm_jax.data.builders import synthetic


def _losses(out):
    return [h['loss'] for h in out['train']]


def _assert_learns(out, metric):
    losses = _losses(out)
    assert len(losses) == 40 and np.all(np.isfinite(losses))
    # Last five steps against the first five: robust to one noisy batch.
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses
    assert 0.0 <= out['eval'][metric] <= 100.0


@pytest.mark.parametrize('name', [pytest.param('vqa', marks=pytest.mark.slow),
                                  'image_classification',
                                  pytest.param('nlvr', marks=pytest.mark.slow)])
def test_classification_tasks_learn(name, tiny_config, tmp_path):
    out = finetune.finetune(tiny_config(name, save_params=True), str(tmp_path))
    _assert_learns(out, 'accuracy')
    assert 'chance/accuracy' in out['eval']
    with open(tmp_path / checkpoint.PARAMS_CONFIG) as f:  # the classifier's outputs, named
        label_names = json.load(f)['label_names']
    if name == 'image_classification':  # the synthetic scenes' largest shape
        assert label_names == list(synthetic.SHAPES)
    with open(tmp_path / finetune.RESULTS) as f:
        written = json.load(f)
    assert written['eval'] == out['eval'] and written['task'] == tiny_config(name).task.name
    # The tag names of train and evaluate (xfm_jax.summaries).
    scalars = curves.read_scalars(tmp_path / 'tensorboard')
    assert scalars['train/loss'] == pytest.approx({h['step']: h['loss'] for h in out['train']})
    assert scalars[f'eval/{written["task"]}/accuracy'] == pytest.approx(
        {40: out['eval']['accuracy']})


@pytest.mark.slow
def test_retrieval_learns_and_is_scored_by_the_evaluator(tiny_config, tmp_path):
    config = tiny_config('retrieval', batch_size=16)  # 8 images x 2 captions; ITM negatives
    config.evaluate.retrieval.update(max_images=8, gallery_queries=0)
    out = finetune.finetune(config, str(tmp_path))
    _assert_learns(out, 'itm/t2i_r1')
    assert out['eval']['chance/t2i_r1'] == pytest.approx(100 / 8)
    assert {'itc_loss', 'itm_loss', 'itc_accuracy', 'itm_accuracy'} <= set(out['train'][0])


def _write_tsv(path, rows):
    with open(path, 'w') as f:
        f.write('sentence\tlabel\n' + ''.join(f'{s}\t{l}\n' for s, l in rows))


def test_glue_tsv_text_classification_learns(tiny_config, tmp_path):
    rng = np.random.default_rng(0)
    words = ['movie', 'plot', 'actor', 'story', 'film', 'scene']

    def rows(n):
        out = []
        for _ in range(n):
            label = int(rng.integers(2))
            mood = ['dull', 'awful', 'bad'][rng.integers(3)] if not label else \
                ['great', 'fine', 'good'][rng.integers(3)]
            out.append((f'the {rng.choice(words)} was {mood}', label))
        return out
    glue = tmp_path / 'SST-2'
    glue.mkdir()
    _write_tsv(glue / 'train.tsv', rows(8))
    _write_tsv(glue / 'dev.tsv', rows(16))
    config = tiny_config('glue')
    config.task.update(tsv_dir=str(glue), max_train=0, max_eval=0)
    out = finetune.finetune(config, str(tmp_path / 'run'))
    _assert_learns(out, 'accuracy')
    assert out['eval']['num_examples'] == 16


def test_init_restores_the_backbone_and_head_only_training_keeps_it(tiny_config, tmp_path):
    """A converted-checkpoint directory of random parameters: after head-only fine-tuning the
    backbone equals the stored values and the head has moved."""
    import orbax.checkpoint as ocp
    from xfm_jax import checkpoint
    from xfm_jax.models.model import build_model, init_variables
    config = tiny_config('image_classification', total_steps=3, trainable='head')
    params = init_variables(build_model(config.model), jax.random.key(7))['params']
    import flax.linen as nn
    params = jax.device_get(nn.unbox(params))
    ocp.PyTreeCheckpointer().save(str(tmp_path / 'converted' / 'params'), {'params': params})
    with open(tmp_path / 'converted' / checkpoint.PARAMS_CONFIG, 'w') as f:
        json.dump({'format': 'xfm', 'model': config.model.to_dict()}, f)
    out = finetune.finetune(config, str(tmp_path / 'run'), init=str(tmp_path / 'converted'))
    tuned = jax.device_get(out['params'])
    # The task reads the vision tower only (temp is a param of the model's setup, always made).
    assert set(tuned['model']) == {'temp', 'vision_encoder'}
    for (path, value), stored in zip(
            jax.tree_util.tree_leaves_with_path(tuned['model']['vision_encoder']),
            jax.tree.leaves(params['vision_encoder'])):
        np.testing.assert_array_equal(value, stored, err_msg=jax.tree_util.keystr(path))
    assert out['init'].endswith('params')


def test_head_only_needs_a_head(tiny_config, tmp_path):
    with pytest.raises(ValueError, match='no head of its own'):
        finetune.finetune(tiny_config('retrieval', trainable='head'), str(tmp_path))


def test_unknown_task_and_trainable_are_named(tiny_config, tmp_path):
    config = tiny_config('vqa', trainable='bias')
    with pytest.raises(ValueError, match="train.trainable must be one of"):
        finetune.trainable({'model': {}}, config.train.trainable)
    config.task.name = 'captioning'
    with pytest.raises(ValueError, match="'captioning' is no fine-tuning task"):
        finetune.finetune(config, str(tmp_path))
