"""The weight mapping: layouts checked against torch, the reference key names of docs/design.md §13,
exact round trips (looped and scanned), and the strictness of the import."""

import itertools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from configs import x2vlm_base, xfm_base
from xfm_jax.convert import ConversionError, detect_format, export_params, import_params, tree
from xfm_jax.convert.rules import Rule, to_ours, to_reference
from xfm_jax.models import model as vlm
from xfm_jax.models.text import TextConfig, TextEncoder
from xfm_jax.models.vision import VisionConfig, VisionTransformer


def _expand(pattern: str) -> list[str]:
    """'a.{x,y}.b' -> ['a.x.b', 'a.y.b'] (every brace group expanded)."""
    parts = re.split(r'\{([^}]*)\}', pattern)
    options = [[p] if i % 2 == 0 else p.split(',') for i, p in enumerate(parts)]
    return [''.join(choice) for choice in itertools.product(*options)]


def _names(*patterns: str) -> list[str]:
    return sorted(name for p in patterns for name in _expand(p))


# docs/design.md §13, written out by hand for one vision block, one text and one fusion layer.
_VISION = (
    'vision_encoder.{cls_token,patch_embed.proj.weight,patch_embed.proj.bias,fc_norm.weight,fc_norm.bias}',
    'vision_encoder.blocks.0.{norm1,norm2,attn.proj,mlp.fc1,mlp.fc2}.{weight,bias}',
    'vision_encoder.blocks.0.attn.{qkv.weight,q_bias,v_bias,relative_position_bias_table}',
    'vision_encoder.blocks.0.{gamma_1,gamma_2}',
)
_LAYER = ('attention.self.{query,key,value}.{weight,bias}',
          'attention.output.{dense,LayerNorm}.{weight,bias}',
          '{intermediate.dense,output.dense,output.LayerNorm}.{weight,bias}')
_CROSS = ('crossattention.self.{query,key,value}.{weight,bias}',
          'crossattention.output.{dense,LayerNorm}.{weight,bias}')
_HEADS = ('{vision_proj,text_proj}.{weight,bias}', '{itm_head,bbox_head}.{0,1,3}.{weight,bias}', 'temp')
XFM_KEYS = _names(
    *_VISION, 'vision_encoder.mask_token',
    'text_encoder.roberta.embeddings.{word_embeddings,position_embeddings,token_type_embeddings}.weight',
    'text_encoder.roberta.embeddings.LayerNorm.{weight,bias}',
    *(f'text_encoder.roberta.encoder.layer.0.{p}' for p in _LAYER),
    'text_encoder.lm_head.{dense,layer_norm}.{weight,bias}',
    'text_encoder.lm_head.{bias,decoder.weight,decoder.bias}',
    *(f'fusion_encoder.roberta.encoder.layer.0.{p}' for p in _LAYER + _CROSS),
    'fusion_encoder.roberta.embeddings.word_embeddings.weight',  # tied to lm_head.decoder
    'fusion_encoder.lm_head.{dense,layer_norm}.{weight,bias}',
    'fusion_encoder.lm_head.{bias,decoder.weight,decoder.bias}',
    *_HEADS)
X2VLM_KEYS = _names(
    *_VISION,
    'text_encoder.bert.embeddings.{word_embeddings,position_embeddings,token_type_embeddings}.weight',
    'text_encoder.bert.embeddings.LayerNorm.{weight,bias}',
    *(f'text_encoder.bert.encoder.layer.0.{p}' for p in _LAYER),
    *(f'text_encoder.bert.encoder.layer.1.{p}' for p in _LAYER + _CROSS),  # fusion layer 0
    'text_encoder.cls.predictions.transform.{dense,LayerNorm}.{weight,bias}',
    'text_encoder.cls.predictions.{bias,decoder.weight,decoder.bias}',
    *_HEADS, 'absolute_frame_pos_embed')


def _tiny(config_module, depth=None, scan=False):
    config = config_module.get_config('tiny').model
    if depth is not None:
        config.vision.depth = config.text.depth = config.fusion.depth = depth
    config.scan_layers = scan
    return vlm.build_model(config)


def _random_params(model, seed=0):
    """Init, then perturb every leaf so biases, LayerNorms and tables are not constants."""
    params = vlm.init_variables(model, jax.random.key(seed))['params']
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: np.asarray(x) + rng.normal(size=np.shape(x)).astype(np.float32),
                        tree.unflatten(tree.flatten(params)))


def _assert_same_tree(a, b):
    fa, fb = tree.flatten(a), tree.flatten(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        np.testing.assert_array_equal(np.asarray(fa[key]), np.asarray(fb[key]), err_msg=key)


# ---- layouts -------------------------------------------------------------------------------------

def test_linear_and_attention_layouts_compute_what_torch_computes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 8)).astype(np.float32)
    linear = torch.nn.Linear(8, 6)
    weight = linear.weight.detach().numpy()
    with torch.no_grad():
        expected = linear(torch.tensor(x)).numpy()
    # q projection: kernel [D, heads, head_dim]
    (kernel,) = to_ours(Rule('linear', ('w',), ('k',)), weight, [(8, 2, 3)])
    bias = linear.bias.detach().numpy().reshape(2, 3)
    np.testing.assert_allclose(np.einsum('ld,dhk->lhk', x, kernel) + bias,
                               expected.reshape(5, 2, 3), atol=1e-6)
    # output projection: kernel [heads, head_dim, D] contracts the two head axes
    (out_kernel,) = to_ours(Rule('linear_out', ('w',), ('k',)), weight.T.copy(), [(2, 3, 8)])
    y = expected.reshape(5, 2, 3)
    np.testing.assert_allclose(np.einsum('lhk,hkd->ld', y, out_kernel), y.reshape(5, 6) @ weight,
                               atol=1e-6)
    # BEiT's fused qkv rows are q, k, v in that order
    qkv = rng.normal(size=(18, 8)).astype(np.float32)
    rule = Rule('qkv', ('qkv',), ('q', 'k', 'v'))
    q, k, v = to_ours(rule, qkv, [(8, 2, 3)] * 3)
    np.testing.assert_allclose(np.einsum('ld,dhk->lhk', x, k).reshape(5, 6), x @ qkv[6:12].T,
                               atol=1e-6)
    np.testing.assert_array_equal(to_reference(rule, [q, k, v]), qkv)


def test_conv_layout_computes_what_torch_computes():
    rng = np.random.default_rng(0)
    conv = torch.nn.Conv2d(3, 4, kernel_size=2, stride=2)
    images = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    with torch.no_grad():
        expected = conv(torch.tensor(images)).numpy().transpose(0, 2, 3, 1)
    (kernel,) = to_ours(Rule('conv', ('w',), ('k',)), conv.weight.detach().numpy(), [(2, 2, 3, 4)])
    got = jax.lax.conv_general_dilated(images.transpose(0, 2, 3, 1), kernel, (2, 2), 'VALID',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    np.testing.assert_allclose(np.asarray(got) + conv.bias.detach().numpy(), expected, atol=1e-5)


# ---- reference names and round trips ----------------------------------------------------------------

@pytest.mark.parametrize('config_module, fmt, expected', [
    (xfm_base, 'xfm', XFM_KEYS), (x2vlm_base, 'x2vlm', X2VLM_KEYS)], ids=['xfm', 'x2vlm'])
def test_exported_keys_are_the_reference_names(config_module, fmt, expected):
    params = vlm.abstract_variables(_tiny(config_module, depth=1))['params']
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), tree.unflatten(tree.flatten(params)))
    assert sorted(export_params(zeros, fmt)) == expected


@pytest.mark.parametrize('config_module, fmt', [(xfm_base, 'xfm'), (x2vlm_base, 'x2vlm')],
                         ids=['xfm', 'x2vlm'])
def test_round_trip_is_identity_looped_and_scanned(config_module, fmt):
    params = _random_params(_tiny(config_module))
    state_dict = export_params(params, fmt)
    assert detect_format(state_dict.keys()) == fmt
    # tied second names hold the same tensor
    word = {'xfm': 'text_encoder.roberta.embeddings.word_embeddings.weight',
            'x2vlm': 'text_encoder.bert.embeddings.word_embeddings.weight'}[fmt]
    decoder = {'xfm': 'text_encoder.lm_head.decoder.weight',
               'x2vlm': 'text_encoder.cls.predictions.decoder.weight'}[fmt]
    np.testing.assert_array_equal(state_dict[word], state_dict[decoder])

    imported, report = import_params(state_dict, params, fmt)
    _assert_same_tree(imported, params)
    assert not report.ignored and not report.filled

    scanned_target = vlm.abstract_variables(_tiny(config_module, scan=True))['params']
    scanned, _ = import_params(state_dict, scanned_target, fmt)
    assert 'layers' in scanned['fusion_encoder']['encoder']
    assert scanned['vision_encoder']['encoder']['blocks']['attn']['query']['kernel'].shape[0] == 2
    exported = export_params(scanned, fmt)
    assert exported.keys() == state_dict.keys()
    for key in state_dict:
        np.testing.assert_array_equal(exported[key], state_dict[key], err_msg=key)


def test_x2vlm_stack_splits_into_text_and_fusion_layers():
    params = _random_params(_tiny(x2vlm_base))  # text depth 2, fusion depth 2
    state_dict = export_params(params, 'x2vlm')
    np.testing.assert_array_equal(
        state_dict['text_encoder.bert.encoder.layer.2.crossattention.self.key.weight'],
        params['fusion_encoder']['encoder']['layers_0']['cross_attention']['key']['kernel']
        .reshape(32, -1).T)
    assert 'text_encoder.bert.encoder.layer.1.crossattention.self.key.weight' not in state_dict
    np.testing.assert_array_equal(state_dict['absolute_frame_pos_embed'], params['frame_embed'])


# ---- strictness -------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def xfm_case():
    params = _random_params(_tiny(xfm_base))
    return params, export_params(params, 'xfm')


def test_unexpected_key_is_an_error(xfm_case):
    params, state_dict = xfm_case
    with pytest.raises(ConversionError, match=r'unexpected reference key text_encoder\.extra\.weight'):
        import_params({**state_dict, 'text_encoder.extra.weight': np.zeros(3)}, params, 'xfm')


def test_missing_key_is_an_error_naming_our_parameters(xfm_case):
    params, state_dict = xfm_case
    partial = {k: v for k, v in state_dict.items() if k != 'vision_encoder.blocks.1.attn.qkv.weight'}
    with pytest.raises(ConversionError, match=(
            r'missing reference key vision_encoder\.blocks\.1\.attn\.qkv\.weight for our '
            r'vision_encoder/encoder/blocks_1/attn/key/kernel, .*/query/kernel, .*/value/kernel')):
        import_params(partial, params, 'xfm')


def test_shape_mismatch_names_both_keys_and_shapes(xfm_case):
    params, state_dict = xfm_case
    bad = {**state_dict, 'itm_head.0.weight': np.zeros((64, 31), np.float32)}
    with pytest.raises(ConversionError, match=(
            r'reference itm_head\.0\.weight has \(64, 31\), expected \(64, 32\) for our '
            r'itm_head/0/kernel of shape \(32, 64\)')):
        import_params(bad, params, 'xfm')


def test_untied_decoder_is_an_error(xfm_case):
    params, state_dict = xfm_case
    bad = dict(state_dict)
    bad['text_encoder.lm_head.decoder.weight'] = bad['text_encoder.lm_head.decoder.weight'] + 1
    with pytest.raises(ConversionError, match=r'text_encoder\.lm_head\.decoder\.weight .* tied'):
        import_params(bad, params, 'xfm')


def test_listed_extras_are_ignored_and_reported(xfm_case):
    params, state_dict = xfm_case
    extras = {
        'vqkd.encoder.weight': np.zeros(2), 'lm_cap_head.bias': np.zeros(2),
        'lm_head.weight': np.zeros(2),  # the vqkd variant's visual-token head
        'vision_encoder.blocks.0.attn.relative_position_index': np.zeros((17, 17)),
        'text_encoder.roberta.embeddings.position_ids': np.zeros((1, 40)),
        'fusion_encoder.roberta.embeddings.position_embeddings.weight': np.zeros((40, 32)),
        'fusion_encoder.roberta.embeddings.LayerNorm.weight': np.zeros(32),
    }
    imported, report = import_params({**state_dict, **extras}, params, 'xfm')
    assert sorted(k for k, _ in report.ignored) == sorted(extras)
    _assert_same_tree(imported, params)


def test_fine_tuned_names_without_heads_need_allow_missing(xfm_case):
    params, state_dict = xfm_case
    fine_tuned = {k.replace('text_encoder.roberta.', 'text_encoder.')
                  .replace('fusion_encoder.roberta.', 'fusion_encoder.'): v
                  for k, v in state_dict.items() if '.lm_head.' not in k
                  and k != 'fusion_encoder.roberta.embeddings.word_embeddings.weight'}
    with pytest.raises(ConversionError, match='missing reference key text_encoder.lm_head.dense.weight'):
        import_params(fine_tuned, params, 'xfm')
    fallback = jax.tree.map(np.zeros_like, params)
    imported, report = import_params(fine_tuned, params, 'xfm',
                                     allow_missing=[r'mlm_head/', r'decoder_embedding'],
                                     fallback=fallback)
    assert sorted(report.filled) == sorted(
        p for p in tree.flatten(params) if 'mlm_head/' in p or 'decoder_embedding' in p)
    np.testing.assert_array_equal(imported['text_encoder']['encoder']['layers_1']['ffn']['output']['kernel'],
                                  params['text_encoder']['encoder']['layers_1']['ffn']['output']['kernel'])
    np.testing.assert_array_equal(imported['fusion_encoder']['decoder_embedding'], 0)


def test_format_detection():
    assert detect_format(['vision_encoder.cls_token', 'fusion_encoder.lm_head.bias']) == 'xfm'
    assert detect_format(['vision_encoder.cls_token', 'text_encoder.bert.x']) == 'x2vlm'
    assert detect_format(['beit.embeddings.patch_embeddings.projection.weight']) == 'hf_beit'
    assert detect_format(['roberta.embeddings.word_embeddings.weight']) == 'hf_roberta'
    assert detect_format(['embeddings.word_embeddings.weight']) == 'hf_bert'
    assert detect_format(['embeddings.word_embeddings.weight'], {'model_type': 'roberta'}) == 'hf_roberta'
    with pytest.raises(ValueError, match='Cannot tell the checkpoint format'):
        detect_format(['foo.weight'])



def test_hf_bert_export_loads_into_transformers_and_round_trips():
    """Exported HF names fill a transformers BertForMaskedLM exactly (no missing or unexpected
    key); BEiT round-trips (transformers >= 5 renames BEiT's hub names itself when loading)."""
    text = TextConfig(vocab_size=50, width=16, depth=2, num_heads=2, mlp_dim=32, max_positions=20)
    ids = jnp.ones((1, 4), jnp.int32)
    text_params = nn.unbox(TextEncoder(text).init(
        jax.random.key(0), ids, ids, method=lambda m, i, mask: m.mlm_logits(m(i, mask)))['params'])
    vision = VisionConfig(image_size=16, patch_size=8, width=16, depth=2, num_heads=2, mlp_dim=32)
    vision_params = nn.unbox(VisionTransformer(vision).init(
        jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params'])
    for params, fmt in ((text_params, 'hf_bert'), (vision_params, 'hf_beit')):
        imported, _ = import_params(export_params(params, fmt), params, fmt)
        _assert_same_tree(imported, params)

    hf_config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=32,
                                        max_position_embeddings=20)
    without_head = {k: v for k, v in text_params.items() if k != 'mlm_head'}
    for params, hf in ((text_params, transformers.BertForMaskedLM(hf_config)),
                       (without_head, transformers.BertModel(hf_config, add_pooling_layer=False))):
        state_dict = export_params(params, 'hf_bert')
        result = hf.load_state_dict({k: torch.tensor(v) for k, v in state_dict.items()},
                                    strict=False)
        assert not result.unexpected_keys and not result.missing_keys
