"""The ``beit2`` format: released BEiT-2 weights in the unilm pre-training layout
(``beitv2_*_pt1k.pth``: mask token, final ``norm``, MIM ``lm_head``, ``cls_pt_layers``, no
``fc_norm``) and in timm's (``fc_norm``, classification ``head``), at another resolution than
the target; and both towers (BEiT-2 + an HF RoBERTa) as one init_from checkpoint."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from configs import x2vlm_base, xfm_base
from xfm_jax import checkpoint
from xfm_jax.convert import detect_format, files, resize_relative_position_table, tree
from xfm_jax.convert.__main__ import main
from xfm_jax.models import model as vlm

WIDTH, HEADS, DEPTH, MLP, PATCH = 32, 2, 2, 64, 8


def _beit2_state_dict(layout: str, grid: int, shared_table: bool = False, seed: int = 0):
    """Random tensors under the names of unilm's VisionTransformerForMaskedImageModeling ('pt')
    or timm's Beit ('timm'), written from those modules' definitions."""
    rng = np.random.default_rng(seed)
    rand = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    entries = (2 * grid - 1) ** 2 + 3
    sd = {'cls_token': rand(1, 1, WIDTH), 'patch_embed.proj.weight': rand(WIDTH, 3, PATCH, PATCH),
          'patch_embed.proj.bias': rand(WIDTH)}
    for i in range(DEPTH):
        b = f'blocks.{i}.'
        sd.update({b + 'norm1.weight': rand(WIDTH), b + 'norm1.bias': rand(WIDTH),
                   b + 'attn.qkv.weight': rand(3 * WIDTH, WIDTH), b + 'attn.q_bias': rand(WIDTH),
                   b + 'attn.v_bias': rand(WIDTH), b + 'attn.proj.weight': rand(WIDTH, WIDTH),
                   b + 'attn.proj.bias': rand(WIDTH), b + 'norm2.weight': rand(WIDTH),
                   b + 'norm2.bias': rand(WIDTH), b + 'mlp.fc1.weight': rand(MLP, WIDTH),
                   b + 'mlp.fc1.bias': rand(MLP), b + 'mlp.fc2.weight': rand(WIDTH, MLP),
                   b + 'mlp.fc2.bias': rand(WIDTH), b + 'gamma_1': rand(WIDTH),
                   b + 'gamma_2': rand(WIDTH)})
        if not shared_table:
            sd[b + 'attn.relative_position_bias_table'] = rand(entries, HEADS)
            sd[b + 'attn.relative_position_index'] = np.zeros((grid ** 2 + 1,) * 2, np.float32)
    if shared_table:
        sd['rel_pos_bias.relative_position_bias_table'] = rand(entries, HEADS)
        sd['rel_pos_bias.relative_position_index'] = np.zeros((grid ** 2 + 1,) * 2, np.float32)
    if layout == 'pt':
        sd.update({'mask_token': rand(1, 1, WIDTH), 'norm.weight': rand(WIDTH),
                   'norm.bias': rand(WIDTH), 'lm_head.weight': rand(64, WIDTH),
                   'lm_head.bias': rand(64), 'cls_pt_layers.0.norm1.weight': rand(WIDTH),
                   'cls_pt_layers.0.mlp.fc1.weight': rand(MLP, WIDTH)})
    else:
        sd.update({'fc_norm.weight': rand(WIDTH), 'fc_norm.bias': rand(WIDTH),
                   'head.weight': rand(10, WIDTH), 'head.bias': rand(10)})
    return sd


def hf_text_config(config_class, text, **extra):
    """An HF BERT / RoBERTa config of the sizes of ``text`` (a ``model.text`` config)."""
    return config_class(
        vocab_size=text.vocab_size, hidden_size=text.width, num_hidden_layers=text.depth,
        num_attention_heads=text.num_heads, intermediate_size=text.mlp_dim,
        max_position_embeddings=text.max_positions,
        **{'type_vocab_size': text.type_vocab_size, **extra})


def _save(path, state_dict, wrapper='model'):
    tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    torch.save({wrapper: tensors} if wrapper else tensors, path)


@pytest.mark.parametrize('shared_table', [False, True], ids=['per_block', 'shared'])
def test_unilm_pretraining_file_imports_and_resizes_to_the_target(tmp_path, capsys, shared_table):
    sd = _beit2_state_dict('pt', grid=3, shared_table=shared_table)
    assert detect_format(sd.keys()) == 'beit2'
    _save(tmp_path / 'beitv2_tiny_pt1k.pth', sd)
    main(['--input', str(tmp_path / 'beitv2_tiny_pt1k.pth'), '--output', str(tmp_path / 'out'),
          '--format=beit2', '--image_size=32'])
    printed = capsys.readouterr().out
    for reason in ('final LayerNorm of the pre-training model', 'masked image modeling head',
                   'extra shallow blocks'):
        assert reason in printed
    assert 'kept from the fallback (allow_missing): fc_norm/bias, fc_norm/scale' in printed
    params, saved = files.load_converted(str(tmp_path / 'out'))
    model = saved['model']
    assert (model['width'], model['depth'], model['num_heads'], model['image_size'],
            model['use_mask_token']) == (WIDTH, DEPTH, HEADS, 32, True)

    np.testing.assert_array_equal(params['mask_token'], sd['mask_token'])
    # fresh, as the reference leaves it
    np.testing.assert_array_equal(params['fc_norm']['scale'], np.ones(WIDTH))
    for i in range(DEPTH):
        block, b = params['encoder'][f'blocks_{i}'], f'blocks.{i}.'
        qkv = sd[b + 'attn.qkv.weight']  # rows: q, k, v; each [H*hd, D]
        np.testing.assert_array_equal(block['attn']['key']['kernel'].reshape(WIDTH, WIDTH),
                                      qkv[WIDTH:2 * WIDTH].T)
        np.testing.assert_array_equal(block['attn']['value']['bias'].reshape(-1),
                                      sd[b + 'attn.v_bias'])
        table = sd['rel_pos_bias.relative_position_bias_table' if shared_table
                   else b + 'attn.relative_position_bias_table']
        assert block['relative_position_bias_table'].shape == (7 * 7 + 3, HEADS)
        np.testing.assert_allclose(block['relative_position_bias_table'],
                                   resize_relative_position_table(table, grid=4), rtol=1e-6)
        np.testing.assert_array_equal(block['relative_position_bias_table'][-3:], table[-3:])


def test_timm_file_with_classifier_imports_without_mask_token(tmp_path):
    sd = _beit2_state_dict('timm', grid=4)
    _save(tmp_path / 'beitv2_tiny.bin', sd, wrapper=None)
    main(['--input', str(tmp_path / 'beitv2_tiny.bin'), '--output', str(tmp_path / 'out')])
    params, saved = files.load_converted(str(tmp_path / 'out'))
    assert saved['format'] == 'beit2' and not saved['model']['use_mask_token']
    np.testing.assert_array_equal(params['fc_norm']['bias'], sd['fc_norm.bias'])
    np.testing.assert_array_equal(params['encoder']['blocks_1']['relative_position_bias_table'],
                                  sd['blocks.1.attn.relative_position_bias_table'])


def test_both_towers_convert_into_the_names_of_the_whole_model(tmp_path, capsys):
    """BEiT-2 + an HF RoBERTa file -> one checkpoint whose names and shapes are the tiny X-FM
    model's vision and language towers, which train.init_from loads by name."""
    config = xfm_base.get_config('tiny').model
    _save(tmp_path / 'beitv2_tiny_pt1k.pth', _beit2_state_dict('pt', grid=3))
    text = config.text
    hf = hf_text_config(transformers.RobertaConfig, text, pad_token_id=text.pad_id,
                        layer_norm_eps=text.ln_eps)
    (tmp_path / 'roberta').mkdir()
    hf.to_json_file(str(tmp_path / 'roberta' / 'config.json'))
    torch.save(transformers.RobertaForMaskedLM(hf).state_dict(),
               tmp_path / 'roberta' / 'pytorch_model.bin')

    main(['--input', str(tmp_path / 'beitv2_tiny_pt1k.pth'), '--output', str(tmp_path / 'init'),
          '--image_size', str(config.vision.image_size),
          '--text_input', str(tmp_path / 'roberta' / 'pytorch_model.bin')])
    assert 'format hf_roberta:' in capsys.readouterr().out
    params, saved = files.load_converted(str(tmp_path / 'init'))
    assert saved['format'] == 'towers'
    assert saved['towers']['text_encoder']['format'] == 'hf_roberta'
    converted = {p: np.shape(v) for p, v in tree.flatten(params).items()}
    abstract = vlm.abstract_variables(vlm.build_model(config))['params']
    wanted = {p: tuple(v.shape) for p, v in tree.flatten(abstract).items()
              if p.startswith(('vision_encoder/', 'text_encoder/'))}
    assert converted == wanted

    with pytest.raises(SystemExit, match='convert each tower alone'):
        main(['--export', '--input', str(tmp_path / 'init'), '--output', str(tmp_path / 'x.pth')])


def test_convert_reads_and_writes_gs_paths(gcs_bucket, gcs_dir):
    """A file in a bucket -> converted params in the bucket -> exported back into the bucket."""
    sd = _beit2_state_dict('timm', grid=4)
    files.write_checkpoint(f'{gcs_dir}/beitv2_tiny.safetensors', sd, {'image_res': 32})
    main(['--input', f'{gcs_dir}/beitv2_tiny.safetensors', '--output', f'{gcs_dir}/ours'])
    params, saved = files.load_converted(f'{gcs_dir}/ours')
    assert saved['reference_config'] == {'image_res': 32}
    np.testing.assert_array_equal(params['cls_token'], sd['cls_token'])
    main(['--export', '--input', f'{gcs_dir}/ours', '--output', f'{gcs_dir}/back.safetensors'])
    back, _, _ = files.read_checkpoint(f'{gcs_dir}/back.safetensors')
    assert set(back) == {k for k in sd if not k.startswith('head.')
                         and not k.endswith('relative_position_index')}
    for key, value in back.items():
        np.testing.assert_array_equal(value, sd[key], err_msg=key)
    folder = gcs_dir.removeprefix(f'{gcs_bucket.uri}/')
    stored = gcs_bucket.list_objects(folder)
    assert f'{folder}/ours/model_config.json' in stored and f'{folder}/back.safetensors' in stored


def test_x2vlm_start_copies_text_layers_into_the_fusion_layers(tmp_path):
    """BEiT-2 (timm, no mask token) + an HF BERT file, the fusion layers' self-attention and FFN
    from BERT layers 0-1 (X²-VLM base: 6-11): every name and shape is the tiny X²-VLM model's,
    cross-attention left out (it stays fresh)."""
    config = x2vlm_base.get_config('tiny').model
    _save(tmp_path / 'beitv2_tiny.pth', _beit2_state_dict('timm', grid=4))
    text = config.text
    hf = hf_text_config(transformers.BertConfig, text)
    (tmp_path / 'bert').mkdir()
    hf.to_json_file(str(tmp_path / 'bert' / 'config.json'))
    bert = transformers.BertForMaskedLM(hf).state_dict()
    torch.save(bert, tmp_path / 'bert' / 'pytorch_model.bin')

    main(['--input', str(tmp_path / 'beitv2_tiny.pth'), '--output', str(tmp_path / 'init'),
          '--text_input', str(tmp_path / 'bert' / 'pytorch_model.bin'),
          '--fusion_from_text_layers=0-1'])
    params, saved = files.load_converted(str(tmp_path / 'init'))
    assert saved['towers']['fusion_encoder']['text_layers'] == '0-1'
    converted = {p: np.shape(v) for p, v in tree.flatten(params).items()}
    abstract = vlm.abstract_variables(vlm.build_model(config))['params']
    wanted = {p: tuple(v.shape) for p, v in tree.flatten(abstract).items()
              if p.startswith(('vision_encoder/', 'text_encoder/', 'fusion_encoder/'))
              and '/cross_attention' not in p}
    assert converted == wanted
    fusion_query = params['fusion_encoder']['encoder']['layers_1']['attention']['query']['kernel']
    np.testing.assert_array_equal(  # [D, H, hd] <- BERT layer 1's [H*hd, D]
        fusion_query.reshape(text.width, -1),
        bert['bert.encoder.layer.1.attention.self.query.weight'].numpy().T)

    # train.init_from loads exactly these by name; everything else stays as it was.
    zeros = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), nn.unbox(abstract))
    loaded_params, loaded, fresh = checkpoint.load_matching_params(str(tmp_path / 'init'), zeros)
    assert set(loaded) == set(converted)
    assert set(fresh) == set(tree.flatten(abstract)) - set(converted)
    np.testing.assert_array_equal(
        loaded_params['fusion_encoder']['encoder']['layers_1']['attention']['query']['kernel'],
        fusion_query)

    with pytest.raises(SystemExit, match='the text tower has no layer 2'):
        main(['--input', str(tmp_path / 'beitv2_tiny.pth'), '--output', str(tmp_path / 'x'),
              '--text_input', str(tmp_path / 'bert' / 'pytorch_model.bin'),
              '--fusion_from_text_layers=1-2'])
