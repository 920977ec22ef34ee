"""Checkpoints laid out as the reference code saves them: every key its modules register (the
captioning heads of both RobertaForMaskedLM, X-FM's dead ``fusion_proj``, buffers, unused fusion
embeddings), vision width != text width, and the reference trainer's embedded config. The key
lists are written by hand from the reference modules (models/xroberta.py, xbert.py, beit2.py,
xfm.py, xvlm.py), not taken from our exporter."""

import functools
import itertools
import json
import re

import numpy as np
import pytest
import torch

from configs import x2vlm_base, xfm_base
from xfm_jax.convert import (export_params, files, import_params, infer_model_config,
                             read_checkpoint, tree, weights)
from xfm_jax.convert.__main__ import main
from xfm_jax.models import model as vlm

VISION_WIDTH, TEXT_WIDTH, TEXT_HEADS = 32, 48, 3  # 48 // 64 would "guess" 1 head


def _names(*patterns: str) -> set[str]:
    """'a.{x,y}.b' -> {'a.x.b', 'a.y.b'} (every brace group expanded)."""
    out = set()
    for pattern in patterns:
        parts = re.split(r'\{([^}]*)\}', pattern)
        options = [[p] if i % 2 == 0 else p.split(',') for i, p in enumerate(parts)]
        out.update(''.join(choice) for choice in itertools.product(*options))
    return out


_BLOCK = ('{norm1,norm2,attn.proj,mlp.fc1,mlp.fc2}.{weight,bias}',
          'attn.{qkv.weight,q_bias,v_bias,relative_position_bias_table,relative_position_index}',
          '{gamma_1,gamma_2}')
_LAYER = ('attention.self.{query,key,value}.{weight,bias}',
          'attention.output.{dense,LayerNorm}.{weight,bias}',
          '{intermediate.dense,output.dense,output.LayerNorm}.{weight,bias}')
_CROSS = ('crossattention.self.{query,key,value}.{weight,bias}',
          'crossattention.output.{dense,LayerNorm}.{weight,bias}')
_EMBEDDINGS = ('embeddings.{word_embeddings,position_embeddings,token_type_embeddings}.weight',
               'embeddings.LayerNorm.{weight,bias}', 'embeddings.position_ids')
_ROBERTA_HEAD = ('{dense,layer_norm}.{weight,bias}', '{bias,decoder.weight,decoder.bias}')
_HEADS = ('{vision_proj,text_proj}.{weight,bias}', '{itm_head,bbox_head}.{0,1,3}.{weight,bias}',
          'temp')


def _prefixed(prefix: str, *patterns: str) -> tuple[str, ...]:
    return tuple(prefix + p for p in patterns)


# XFM (models/xfm.py): BEiT-2 + RobertaForMaskedLM text encoder (no cross layers) + a second
# RobertaForMaskedLM as fusion encoder (all cross layers), both with lm_head AND lm_cap_head;
# fusion_proj exists because the widths differ. Two layers / blocks each.
XFM_REFERENCE_KEYS = _names(
    'vision_encoder.{cls_token,mask_token}', 'vision_encoder.{patch_embed.proj,fc_norm}.{weight,bias}',
    *(f'vision_encoder.blocks.{{0,1}}.{p}' for p in _BLOCK),
    *_prefixed('text_encoder.roberta.', *_EMBEDDINGS),
    *(f'text_encoder.roberta.encoder.layer.{{0,1}}.{p}' for p in _LAYER),
    *_prefixed('text_encoder.{lm_head,lm_cap_head}.', *_ROBERTA_HEAD),
    *_prefixed('fusion_encoder.roberta.', *_EMBEDDINGS),
    *(f'fusion_encoder.roberta.encoder.layer.{{0,1}}.{p}' for p in _LAYER + _CROSS),
    *_prefixed('fusion_encoder.{lm_head,lm_cap_head}.', *_ROBERTA_HEAD),
    *_HEADS, 'fusion_proj.{weight,bias}')
# X²-VLM (models/xvlm.py): BEiT-2 without mask token + one BertForMaskedLM whose layers from
# text_fusion_start_at on have cross-attention; video adds the frame embedding.
X2VLM_REFERENCE_KEYS = _names(
    'vision_encoder.cls_token', 'vision_encoder.{patch_embed.proj,fc_norm}.{weight,bias}',
    *(f'vision_encoder.blocks.{{0,1}}.{p}' for p in _BLOCK),
    *_prefixed('text_encoder.bert.', *_EMBEDDINGS),
    *(f'text_encoder.bert.encoder.layer.{{0,1}}.{p}' for p in _LAYER),
    *(f'text_encoder.bert.encoder.layer.{{2,3}}.{p}' for p in _LAYER + _CROSS),
    'text_encoder.cls.predictions.transform.{dense,LayerNorm}.{weight,bias}',
    'text_encoder.cls.predictions.{bias,decoder.weight,decoder.bias}',
    *_HEADS, 'absolute_frame_pos_embed')

# What the reference never uses, by reason (the import must list exactly these).
_XFM_UNUSED = re.compile(r'lm_cap_head\.|^fusion_proj\.|position_ids$|relative_position_index$|'
                         r'^fusion_encoder\.roberta\.embeddings\.(position|token_type|LayerNorm)')
_X2VLM_UNUSED = re.compile(r'position_ids$|relative_position_index$')


@functools.cache
def _reference_case(family):
    """(model config, random params, their reference state dict with every registered key);
    one model init per family for the whole module (callers copy before changing)."""
    config_module, keys = {'xfm': (xfm_base, XFM_REFERENCE_KEYS),
                           'x2vlm': (x2vlm_base, X2VLM_REFERENCE_KEYS)}[family]
    config = config_module.get_config('tiny').model
    config.text.update(width=TEXT_WIDTH, num_heads=TEXT_HEADS, mlp_dim=2 * TEXT_WIDTH)
    assert config.vision.width == VISION_WIDTH
    return (config, *_reference_state_dict(config, keys))


def _reference_state_dict(config, keys, seed=0):
    """Random params of our model, written under the reference names, plus random values for
    every reference key we have no parameter for (shapes as the reference module makes them)."""
    abstract = vlm.abstract_variables(vlm.build_model(config))['params']  # shapes, no compile
    rng = np.random.default_rng(seed)
    params = tree.unflatten({path: rng.normal(size=leaf.shape).astype(np.float32)
                             for path, leaf in tree.flatten(abstract).items()})
    state_dict = export_params(params, config.family)
    extra_shapes = {
        r'position_ids$': (1, config.text.max_positions),
        r'relative_position_index$': ((config.vision.image_size // config.vision.patch_size) ** 2 + 1,) * 2,
        r'^fusion_proj\.weight$': (VISION_WIDTH, TEXT_WIDTH), r'^fusion_proj\.bias$': (VISION_WIDTH,),
        r'lm_cap_head\.decoder\.weight$': (config.text.vocab_size, TEXT_WIDTH),
        r'lm_cap_head\.(decoder\.)?bias$': (config.text.vocab_size,),
        r'(lm_cap_head\.|embeddings\.LayerNorm\.)': (TEXT_WIDTH,),
        r'position_embeddings': (config.text.max_positions, TEXT_WIDTH),
        r'token_type_embeddings': (config.text.type_vocab_size, TEXT_WIDTH),
    }
    for key in sorted(set(keys) - set(state_dict)):
        shape = next(s for pattern, s in extra_shapes.items() if re.search(pattern, key))
        if key.endswith('lm_cap_head.dense.weight'):
            shape = (TEXT_WIDTH, TEXT_WIDTH)
        state_dict[key] = rng.normal(size=shape).astype(np.float32)
    return params, state_dict


def _reference_config(config, **text_config):
    """The reference trainer's config dict (its yaml), as Pretrain.py saves it."""
    text_encoder = 'data/roberta-base' if config.family == 'xfm' else 'data/bert-base-uncased'
    return dict(text_encoder=text_encoder, text_num_hidden_layers=config.text.depth,
                text_fusion_start_at=config.text.depth,
                fusion_num_hidden_layers=config.fusion.depth, fusion_fusion_start_at=0,
                vision_config='configs/model/config_beit2_base.json',
                image_res=config.vision.image_size, patch_size=config.vision.patch_size,
                embed_dim=config.embed_dim, temp=0.07, **text_config)


def test_xfm_reference_checkpoint_imports_strictly_with_heads_from_its_config(tmp_path, capsys):
    config, params, state_dict = _reference_case('xfm')
    assert set(state_dict) == XFM_REFERENCE_KEYS
    hf_text = dict(num_attention_heads=TEXT_HEADS, hidden_size=TEXT_WIDTH, layer_norm_eps=1e-5,
                   pad_token_id=1, vocab_size=config.text.vocab_size)
    torch.save({'model': {k: torch.from_numpy(v) for k, v in state_dict.items()},
                'config': _reference_config(config, text_config=hf_text), 'epoch': 0},
               tmp_path / 'xfm.th')

    main(['--input', str(tmp_path / 'xfm.th'), '--output', str(tmp_path / 'ours')])
    printed = capsys.readouterr().out
    assert 'ignored (captioning LM head' in printed and 'ignored (Linear the X-FM code' in printed
    restored, saved = files.load_converted(str(tmp_path / 'ours'))
    assert saved['model']['text']['num_heads'] == TEXT_HEADS
    assert saved['model']['vision']['num_heads'] == config.vision.num_heads
    assert (saved['model']['text']['width'], saved['model']['vision']['width']) == (TEXT_WIDTH,
                                                                                  VISION_WIDTH)
    for path, value in tree.flatten(params).items():
        np.testing.assert_array_equal(tree.flatten(restored)[path], value, err_msg=path)

    # The report lists exactly the keys the reference never uses.
    _, report = import_params(state_dict, params, 'xfm')
    assert sorted(k for k, _ in report.ignored) == sorted(k for k in state_dict
                                                          if _XFM_UNUSED.search(k))

    main(['--export', '--input', str(tmp_path / 'ours'), '--output', str(tmp_path / 'back.pth')])
    back = torch.load(tmp_path / 'back.pth', weights_only=True)
    assert set(back['model']) == {k for k in state_dict if not _XFM_UNUSED.search(k)}
    for key, value in back['model'].items():
        np.testing.assert_array_equal(value.numpy(), state_dict[key], err_msg=key)
    assert back['config']['text_num_hidden_layers'] == config.text.depth


def test_x2vlm_heads_from_a_config_json_beside_the_file_and_stated_sizes_checked(tmp_path):
    config, params, state_dict = _reference_case('x2vlm')
    assert set(state_dict) == X2VLM_REFERENCE_KEYS
    reference_config = _reference_config(config)
    reference_config['text_num_hidden_layers'] = config.text.depth + config.fusion.depth
    files.write_checkpoint(str(tmp_path / 'x2vlm.safetensors'), state_dict, reference_config)
    with pytest.raises(ValueError, match='pass --text_num_heads'):
        infer_model_config('x2vlm', state_dict, reference_config=reference_config)
    (tmp_path / 'config.json').write_text(json.dumps(
        {'model_type': 'bert', 'num_attention_heads': TEXT_HEADS, 'hidden_size': TEXT_WIDTH}))

    state_dict, embedded, beside = read_checkpoint(str(tmp_path / 'x2vlm.safetensors'))
    model_config = infer_model_config('x2vlm', state_dict, reference_config=embedded,
                                      hf_config=beside)
    assert model_config['text']['num_heads'] == TEXT_HEADS
    assert (model_config['text']['depth'], model_config['fusion']['depth']) == (2, 2)
    imported, report = import_params(state_dict, params, 'x2vlm')
    assert sorted(k for k, _ in report.ignored) == sorted(k for k in state_dict
                                                          if _X2VLM_UNUSED.search(k))
    exported = export_params(imported, 'x2vlm')
    assert set(exported) == {k for k in state_dict if not _X2VLM_UNUSED.search(k)}
    for key, value in exported.items():
        np.testing.assert_array_equal(value, state_dict[key], err_msg=key)

    with pytest.raises(ValueError, match='contradicts num_attention_heads=3'):
        infer_model_config('x2vlm', state_dict, reference_config=embedded, hf_config=beside,
                           text_num_heads=4)
    with pytest.raises(ValueError, match='states text_fusion_start_at=3, but the tensors give 2'):
        infer_model_config('x2vlm', state_dict, hf_config=beside,
                           reference_config=dict(embedded, text_fusion_start_at=3))


def test_unlisted_key_is_still_an_error():
    """The ignore rules name exactly the reference's unused modules: a lookalike is refused."""
    _, params, state_dict = _reference_case('xfm')
    state_dict = {**state_dict, 'text_encoder.lm_cap_head_extra.bias': np.zeros(3, np.float32)}
    with pytest.raises(weights.ConversionError, match='unexpected reference key '
                                                      r'text_encoder\.lm_cap_head_extra\.bias'):
        import_params(state_dict, params, 'xfm')
