"""Our TextEncoder / FusionEncoder / MLM head vs transformers' BERT and RoBERTa (fp32, CPU).

Weights are random (torch), converted with xfm_jax.convert, and the outputs of both frameworks
compared; the reference numbers come from transformers, never from our code.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from xfm_jax.convert import import_params, tree
from xfm_jax.models.fusion import FusionEncoder
from xfm_jax.models.text import TextConfig, TextEncoder

TOL = 1e-5
SIZES = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=48, max_position_embeddings=40, attn_implementation='eager')


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Adds noise to every weight so LayerNorm scales/biases and zero biases are tested too."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _state_dict(model) -> dict:
    return {k: v.numpy() for k, v in model.state_dict().items()}


def _our_config(hf, variant: str, **overrides) -> TextConfig:
    return TextConfig(
        variant=variant, vocab_size=hf.vocab_size, width=hf.hidden_size,
        depth=hf.num_hidden_layers, num_heads=hf.num_attention_heads, mlp_dim=hf.intermediate_size,
        max_positions=hf.max_position_embeddings, type_vocab_size=hf.type_vocab_size,
        pad_id=hf.pad_token_id, ln_eps=hf.layer_norm_eps, **overrides)


def _batch(pad_id: int, first_id: int, vocab: int, lengths=(9, 5, 7)):
    """ids [B, L] with each row padded after its length; mask = ids != pad."""
    rng = np.random.default_rng(0)
    ids = np.full((len(lengths), max(lengths)), pad_id, np.int64)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(3, vocab, n)
        ids[row, 0] = first_id
    return ids, (ids != pad_id).astype(np.int64)


def _text_target(config: TextConfig, with_head: bool):
    ids = jnp.ones((1, 4), jnp.int32)
    method = (lambda m, i, mask: m.mlm_logits(m(i, mask))) if with_head else None
    return jax.eval_shape(lambda r: TextEncoder(config).init(r, ids, ids, method=method),
                          jax.random.key(0))['params']


@pytest.mark.parametrize('variant', ['bert', 'roberta'])
def test_text_encoder_matches_transformers(variant):
    if variant == 'bert':
        hf_config = transformers.BertConfig(**SIZES)
        hf = _perturb(transformers.BertForMaskedLM(hf_config))
        base = hf.bert
        pad, first = 0, 2
    else:  # RoBERTa: pad 1, positions start at pad + 1, one token type
        hf_config = transformers.RobertaConfig(**SIZES, type_vocab_size=1, pad_token_id=1)
        hf = _perturb(transformers.RobertaForMaskedLM(hf_config))
        base = hf.roberta
        pad, first = 1, 0
    config = _our_config(hf_config, variant)
    params, report = import_params(_state_dict(hf), _text_target(config, True), f'hf_{variant}')
    assert not [k for k, _ in report.ignored if 'embeddings' in k and 'position_ids' not in k]

    ids, mask = _batch(pad, first, hf_config.vocab_size)
    with torch.no_grad():
        expected_hidden = base(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
        expected_logits = hf.lm_head(expected_hidden) if variant == 'roberta' else hf.cls(expected_hidden)
    encoder = TextEncoder(config)
    hidden = encoder.apply({'params': params}, jnp.asarray(ids), jnp.asarray(mask))
    logits = encoder.apply({'params': params}, hidden, method=TextEncoder.mlm_logits)

    hidden_diff = np.abs(np.asarray(hidden) - expected_hidden.numpy()).max()
    logits_diff = np.abs(np.asarray(logits) - expected_logits.numpy()).max()
    print(f'{variant}: hidden max|diff| {hidden_diff:.2e}, MLM logits max|diff| {logits_diff:.2e}')
    assert hidden_diff <= TOL and logits_diff <= TOL


def test_fusion_cross_attention_matches_bert_with_cross_attention():
    """Our fusion layers (self-attn -> cross-attn -> FFN, post-LN) vs BertLayer with crossattention.

    transformers >= 5 builds cross-attention only with ``is_decoder=True``, whose BertModel
    forward makes the self-attention causal; so the BertLayers are run one by one with explicit
    (non-causal) additive padding masks, under eager attention which adds the mask as given.
    BERT's cross-attention keys/values read ``hidden_size``-wide states, so the image tokens are
    as wide as the text here; our fusion input is BERT's embedding output.
    """
    hf_config = transformers.BertConfig(**SIZES, is_decoder=True, add_cross_attention=True)
    hf = _perturb(transformers.BertModel(hf_config, add_pooling_layer=False))
    config = _our_config(hf_config, 'bert')
    rng = np.random.default_rng(1)
    ids, mask = _batch(0, 2, hf_config.vocab_size)
    image = rng.normal(size=(3, 6, hf_config.hidden_size)).astype(np.float32)
    image_mask = np.ones((3, 6), np.int64)
    image_mask[1, 4:] = 0  # a box-masked image: keys outside the box are excluded

    fusion = FusionEncoder(config)
    layers_only = {k: v for k, v in _state_dict(hf).items() if k.startswith('encoder.')}
    target = jax.eval_shape(
        lambda r: fusion.init(r, jnp.zeros((1, 4, 32)), jnp.ones((1, 4)), jnp.zeros((1, 6, 32)),
                              jnp.ones((1, 6))), jax.random.key(0))['params']
    params, _ = import_params(layers_only, target, 'hf_bert')
    additive = lambda m: torch.tensor((1.0 - m[:, None, None, :]) * -1e9, dtype=torch.float32)  # noqa: E731
    with torch.no_grad():
        embedded = hf.embeddings(input_ids=torch.tensor(ids))
        expected = embedded
        for layer in hf.encoder.layer:
            expected = layer(expected, attention_mask=additive(mask),
                             encoder_hidden_states=torch.tensor(image),
                             encoder_attention_mask=additive(image_mask))
    fused = fusion.apply({'params': params}, jnp.asarray(embedded.numpy()), jnp.asarray(mask),
                         jnp.asarray(image), jnp.asarray(image_mask))
    diff = np.abs(np.asarray(fused) - expected.numpy()).max()
    print(f'fusion (cross-attention) max|diff| {diff:.2e}')
    assert diff <= TOL


def test_scanned_text_encoder_equals_looped():
    hf_config = transformers.BertConfig(**SIZES)
    hf = _perturb(transformers.BertModel(hf_config, add_pooling_layer=False))
    config = _our_config(hf_config, 'bert')
    scanned_config = dataclasses.replace(config, scan_layers=True)
    looped, _ = import_params(_state_dict(hf), _text_target(config, False), 'hf_bert')
    scanned, _ = import_params(_state_dict(hf), _text_target(scanned_config, False), 'hf_bert')
    assert 'layers' in scanned['encoder'] and 'layers_0' in looped['encoder']
    np.testing.assert_array_equal(scanned['encoder']['layers']['ffn']['output']['kernel'][1],
                                  looped['encoder']['layers_1']['ffn']['output']['kernel'])
    ids, mask = _batch(0, 2, hf_config.vocab_size)
    out_looped = TextEncoder(config).apply({'params': looped}, ids, mask)
    out_scanned = TextEncoder(scanned_config).apply({'params': scanned}, ids, mask)
    np.testing.assert_allclose(np.asarray(out_scanned), np.asarray(out_looped), atol=1e-6, rtol=0)
    # and the two layouts flatten to the same looped tensors
    flat_scanned = tree.unstack_layers(tree.flatten(scanned))
    assert flat_scanned.keys() == tree.flatten(looped).keys()
