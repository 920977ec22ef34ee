"""Our VisionTransformer blocks vs transformers' BeitModel (fp32, CPU, random weights).

BeitModel pools differently (LayerNorm of the patch mean), so the blocks are compared on the
per-layer hidden states, and our X-FM output (token 0 = mean of fc_norm'ed patches, the cls
output discarded) is recomputed by hand in numpy from BeitModel's last hidden state.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from xfm_jax.convert import import_params
from xfm_jax.models.vision import VisionBlock, VisionConfig, VisionTransformer

TOL = 1e-5


def _beit(shared_table: bool = False, seed: int = 0, abs_pos: bool = False):
    config = transformers.BeitConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, hidden_act='gelu', layer_norm_eps=1e-6, layer_scale_init_value=0.1,
        use_absolute_position_embeddings=abs_pos, use_relative_position_bias=not shared_table,
        use_shared_relative_position_bias=shared_table, use_mean_pooling=True, use_mask_token=True,
        attn_implementation='eager')
    model = transformers.BeitModel(config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # relpos tables and layer scales start at constants
            p.add_(0.1 * torch.randn_like(p))
    return config, model.eval()


def _ours(hf_config, **overrides) -> VisionConfig:
    fields = dict(
        image_size=hf_config.image_size, patch_size=hf_config.patch_size,
        width=hf_config.hidden_size, depth=hf_config.num_hidden_layers,
        num_heads=hf_config.num_attention_heads, mlp_dim=hf_config.intermediate_size,
        ln_eps=hf_config.layer_norm_eps)
    return VisionConfig(**{**fields, **overrides})


def _target(config: VisionConfig):
    images = jnp.zeros((1, config.image_size, config.image_size, 3))
    return jax.eval_shape(lambda r: VisionTransformer(config).init(r, images),
                          jax.random.key(0))['params']


def _inputs(config: VisionConfig):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, config.image_size, config.image_size, 3)).astype(np.float32)
    mim_mask = rng.random((2, config.num_patches)) < 0.4
    return images, mim_mask


def _hf_forward(model, images, mim_mask):
    with torch.no_grad():
        out = model(torch.tensor(images.transpose(0, 3, 1, 2)),
                    bool_masked_pos=torch.tensor(mim_mask), output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states]


def _block_outputs(config, params, images, mim_mask):
    """Our final output and each VisionBlock's output (flax capture_intermediates)."""
    out, state = VisionTransformer(config).apply(
        {'params': params}, images, mim_mask,
        capture_intermediates=lambda module, _: isinstance(module, VisionBlock))
    blocks = state['intermediates']['encoder']
    return np.asarray(out), [np.asarray(blocks[f'blocks_{i}']['__call__'][0][0])
                             for i in range(config.depth)]


def _xfm_pooling(last_hidden, scale, bias, eps):
    """numpy: drop the cls output, LayerNorm each patch, prepend the mean patch."""
    patches = last_hidden[:, 1:].astype(np.float64)
    mean = patches.mean(-1, keepdims=True)
    var = patches.var(-1, keepdims=True)
    normed = (patches - mean) / np.sqrt(var + eps) * scale + bias
    return np.concatenate([normed.mean(1, keepdims=True), normed], axis=1)


@pytest.mark.parametrize('shared_table,abs_pos', [(False, False), (True, False), (False, True)],
                         ids=['per_layer_table', 'shared_table', 'absolute_position_embedding'])
def test_blocks_match_beit(shared_table, abs_pos):
    hf_config, hf = _beit(shared_table, abs_pos=abs_pos)
    config = _ours(hf_config, abs_pos_emb='learned' if abs_pos else 'none')
    state_dict = {k: v.numpy() for k, v in hf.state_dict().items()}
    params, _ = import_params(state_dict, _target(config), 'hf_beit')
    if shared_table:  # the one table is copied into every block
        tables = [params['encoder'][f'blocks_{i}']['relative_position_bias_table'] for i in range(3)]
        assert all(np.array_equal(t, tables[0]) for t in tables)
    if abs_pos:
        np.testing.assert_array_equal(params['pos_embed'],
                                      state_dict['embeddings.position_embeddings'])

    images, mim_mask = _inputs(config)
    expected = _hf_forward(hf, images, mim_mask)
    out, blocks = _block_outputs(config, params, images, mim_mask)
    diffs = [np.abs(ours - theirs).max() for ours, theirs in zip(blocks, expected[1:])]
    print(f'BEiT ({"shared" if shared_table else "per-layer"} table) per-block max|diff| '
          + ', '.join(f'{d:.2e}' for d in diffs))
    assert max(diffs) <= TOL

    norm = hf.pooler.layernorm
    pooled = _xfm_pooling(expected[-1], norm.weight.detach().numpy(), norm.bias.detach().numpy(),
                          norm.eps)
    pool_diff = np.abs(out - pooled).max()
    print(f'X-FM pooling (numpy from BEiT last hidden state) max|diff| {pool_diff:.2e}')
    assert pool_diff <= TOL


def test_scanned_blocks_equal_looped():
    hf_config, hf = _beit()
    config = _ours(hf_config)
    scanned_config = dataclasses.replace(config, scan_layers=True)
    state_dict = {k: v.numpy() for k, v in hf.state_dict().items()}
    looped, _ = import_params(state_dict, _target(config), 'hf_beit')
    scanned, _ = import_params(state_dict, _target(scanned_config), 'hf_beit')
    assert scanned['encoder']['blocks']['gamma_1'].shape == (3, 32)
    images, mim_mask = _inputs(config)
    np.testing.assert_allclose(
        np.asarray(VisionTransformer(scanned_config).apply({'params': scanned}, images, mim_mask)),
        np.asarray(VisionTransformer(config).apply({'params': looped}, images, mim_mask)),
        atol=1e-6, rtol=0)


def test_import_at_another_resolution_resizes_every_table():
    hf_config, hf = _beit()
    config = _ours(hf_config, image_size=48)  # grid 4 -> 6: tables 52 -> 124 rows
    state_dict = {k: v.numpy() for k, v in hf.state_dict().items()}
    params, report = import_params(state_dict, _target(config), 'hf_beit')
    assert [(a, b) for _, a, b in report.resized] == [((52, 4), (124, 4))] * 3
    table = params['encoder']['blocks_0']['relative_position_bias_table']
    source = state_dict['layers.0.relative_position_bias.relative_position_bias_table']
    np.testing.assert_array_equal(table[-3:], source[-3:])  # cls entries kept
    # offset (0, 0) sits at the centre of both grids and is a knot of the spline
    np.testing.assert_allclose(table[(11 * 11) // 2], source[(7 * 7) // 2], atol=1e-6)
    out = VisionTransformer(config).apply({'params': params}, jnp.zeros((1, 48, 48, 3)))
    assert out.shape == (1, 37, 32) and np.isfinite(np.asarray(out)).all()


def test_unboxed_and_boxed_targets_agree():
    hf_config, hf = _beit()
    config = _ours(hf_config)
    state_dict = {k: v.numpy() for k, v in hf.state_dict().items()}
    boxed = _target(config)
    params_boxed, _ = import_params(state_dict, boxed, 'hf_beit')
    params_plain, _ = import_params(state_dict, nn.unbox(boxed), 'hf_beit')
    jax.tree.map(np.testing.assert_array_equal, params_boxed, params_plain)
