"""A language tower alone: ``convert --text_input`` without a vision input, and ``train.init_from``
(any ``checkpoint.locate`` caller) given an HF BERT file directly, converted once into the cache."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import transformers

from configs import xfm_base
from tests.convert.test_beit2 import hf_text_config
from xfm_jax import checkpoint
from xfm_jax.convert import files, tree
from xfm_jax.convert.__main__ import main
from xfm_jax.models import model as vlm


@pytest.fixture
def bert_file(tmp_path):
    """A random HF BERT (the tiny model's text sizes) as model.safetensors + config.json."""
    text = xfm_base.get_config('tiny').model.text
    hf = hf_text_config(transformers.BertConfig, text, type_vocab_size=1)
    directory = tmp_path / 'bert'
    directory.mkdir()
    hf.to_json_file(str(directory / 'config.json'))
    state = {k: v.numpy() for k, v in transformers.BertModel(hf).state_dict().items()}
    safetensors.numpy.save_file(state, str(directory / 'model.safetensors'))
    return directory / 'model.safetensors', state


def test_text_input_alone_writes_the_language_tower(tmp_path, bert_file):
    path, state = bert_file
    main(['--text_input', str(path), '--output', str(tmp_path / 'out')])
    params, saved = files.load_converted(str(tmp_path / 'out'))
    assert saved['format'] == 'towers' and list(saved['towers']) == ['text_encoder']
    assert list(params) == ['text_encoder']
    np.testing.assert_array_equal(  # [D, H, hd] <- BERT layer 1's [H*hd, D]
        np.reshape(params['text_encoder']['encoder']['layers_1']['attention']['query']['kernel'],
                   (state['embeddings.word_embeddings.weight'].shape[1], -1)),
        state['encoder.layer.1.attention.self.query.weight'].T)
    with pytest.raises(SystemExit):
        main(['--output', str(tmp_path / 'none')])  # neither --input nor --text_input


def test_init_from_takes_an_hf_file_directly_and_converts_it_once(tmp_path, bert_file,
                                                                  monkeypatch, capsys):
    path, state = bert_file
    monkeypatch.setenv('XFM_CACHE_DIR', str(tmp_path / 'cache'))
    model = vlm.build_model(xfm_base.get_config('tiny').model)
    abstract = nn.unbox(vlm.abstract_variables(model)['params'])
    zeros = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), abstract)

    params, loaded, fresh = checkpoint.load_matching_params(str(path), zeros)
    assert 'converting' in capsys.readouterr().out
    text_names = {p for p in tree.flatten(abstract) if p.startswith('text_encoder/')}
    # a BertModel file has no MLM head (BertForMaskedLM's): the head starts fresh
    head = {p for p in text_names if p.startswith('text_encoder/mlm_head/')}
    assert head and set(loaded) == text_names - head and fresh.keys() & text_names == head
    np.testing.assert_array_equal(params['text_encoder']['embeddings']['word_embeddings']
                                  ['embedding'], state['embeddings.word_embeddings.weight'])
    assert not np.any(params['vision_encoder']['patch_embed']['kernel'])  # untouched

    converted = list((tmp_path / 'cache' / 'converted').iterdir())
    checkpoint.load_matching_params(str(path), zeros)
    assert 'converting' not in capsys.readouterr().out  # the cached conversion is read
    assert list((tmp_path / 'cache' / 'converted').iterdir()) == converted


def test_an_hf_file_for_x2vlm_also_starts_the_fusion_layers(tmp_path, bert_file, monkeypatch):
    path, state = bert_file
    monkeypatch.setenv('XFM_CACHE_DIR', str(tmp_path / 'cache'))
    location = checkpoint.locate(str(path), fusion_from_text_layers='1-1')
    params, saved = files.load_converted(str(location.tree.parent))
    assert saved['towers']['fusion_encoder']['text_layers'] == '1-1'
    np.testing.assert_array_equal(
        params['fusion_encoder']['encoder']['layers_0']['ffn']['output']['kernel'],
        params['text_encoder']['encoder']['layers_1']['ffn']['output']['kernel'])
    assert checkpoint.locate(str(path)).tree != location.tree  # options are part of the key
