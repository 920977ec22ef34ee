"""Texts sharing an image's cross-attention keys/values compute what one copy of the image per
text computes: the fusion alone, and the region objectives' losses and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import x2vlm_base, xfm_base
from xfm_jax import objectives
from xfm_jax.models import layers
from xfm_jax.models.model import build_model, init_variables

_CONFIGS = {'xfm': xfm_base, 'x2vlm': x2vlm_base}
# (family, scan_layers, remat_policy, attention_impl, train): dropout on where train; the fused
# ('xla') attention only runs without it.
# Two compiles of the region losses' gradients each (~1-2 min on 2 loaded cores): the other
# layer forms, remat policies and X²-VLM are marked slow.
_VARIANTS = [('xfm', False, 'none', 'einsum', True),
             pytest.param('xfm', True, 'dots', 'xla', False, marks=pytest.mark.slow),
             pytest.param('x2vlm', True, 'full', 'einsum', True, marks=pytest.mark.slow)]


def _model(family, scan, remat, impl):
    config = _CONFIGS[family].get_config('tiny')
    config.objectives.itm.negative_groups = 2
    config.model.update(scan_layers=scan, remat_policy=remat, attention_impl=impl)
    model = build_model(config.model)
    params = jax.jit(lambda rng: nn.unbox(init_variables(model, rng))['params'])(
        jax.random.key(0))
    return config, model, params


def test_take_rows_picks_inside_groups():
    x = np.arange(12).reshape(6, 2)
    # Two groups of three rows; positions are group-local.
    np.testing.assert_array_equal(layers.take_rows(x, np.array([[2, 0], [1, 1]])),
                                  x[[2, 0, 4, 4]])
    # Groups of one row: a repeat.
    np.testing.assert_array_equal(layers.take_rows(x, np.zeros((6, 2), np.int32)),
                                  np.repeat(x, 2, axis=0))


def test_fusion_over_shared_images_equals_one_copy_per_text():
    """Rows read images through group-local indices (two groups, a row repeating an image and
    one replacing its token 0): output and gradients equal fusing gathered copies."""
    config, model, params = _model('xfm', False, 'none', 'einsum')
    rng = np.random.default_rng(0)
    images, rows, length = 4, 6, 5
    tokens = rng.standard_normal((images, 17, config.model.vision.width)).astype(np.float32)
    text = rng.standard_normal((rows, length, config.model.text.width)).astype(np.float32)
    text_mask = np.ones((rows, length), np.int32)
    image_mask = (rng.random((rows, 17)) > 0.3).astype(np.int32)
    local = np.array([[1, 1, 0], [0, 1, 1]])  # groups of 2 images: rows read images 1,1,0,2,3,3
    global_index = np.array([1, 1, 0, 2, 3, 3])
    first = rng.standard_normal((rows, config.model.vision.width)).astype(np.float32)

    def shared(p, tokens, text):
        return model.apply({'params': p}, text, text_mask, tokens, image_mask,
                           image_rows=jnp.asarray(local), first_token=first, method='fuse')

    def copies(p, tokens, text):
        per_row = tokens[global_index].at[:, 0].set(first)
        return model.apply({'params': p}, text, text_mask, per_row, image_mask, method='fuse')

    probe = rng.standard_normal((rows, length, config.model.text.width)).astype(np.float32)
    results = [jax.jit(jax.value_and_grad(lambda *a, f=f: jnp.sum(f(*a) * probe),
                                          argnums=(0, 1, 2)))(params, tokens, text)
               for f in (shared, copies)]
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _one_copy_per_text(enc, patch_mask, name):
    """The pair view as it was before sharing: every region text its own copy of the image
    tokens; but for box regression, the region token (mean of the box's patches) in place of
    token 0."""
    texts = patch_mask.shape[1]
    tokens = jnp.repeat(enc['image_tokens'], texts, axis=0)
    if name != 'box':
        weights = jnp.asarray(patch_mask, jnp.float32).reshape(tokens.shape[0], -1, 1)
        region = (tokens[:, 1:] * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
        tokens = tokens.at[:, 0].set(region)
    copies = dict(enc, image_tokens=tokens,
                  image_index=jnp.arange(tokens.shape[0], dtype=jnp.int32))
    del copies['region_token']
    return copies


@pytest.mark.parametrize('family,scan,remat,impl,train', _VARIANTS)
def test_region_losses_and_gradients_equal_one_copy_per_text(family, scan, remat, impl, train,
                                                             make_batch):
    config, model, params = _model(family, scan, remat, impl)
    batch = make_batch(config, 'region', batch=4, region_texts=3)
    batch['text_valid'][1, 2] = 0.0
    names = ('itc', 'itm', 'imlm', 'box')
    pairs = 12
    # The same hard negatives for both: a negative image from another image of the row's group.
    negatives = (np.array([3, 4, 5, 0, 1, 2, 9, 10, 11, 6, 7, 8]),
                 np.array([4, 3, 4, 1, 0, 0, 7, 6, 6, 10, 11, 9]))

    def losses(p, copies):
        bound = model.bind({'params': p}, rngs={'dropout': jax.random.key(2)})
        enc = objectives.encode_stream(bound, 'region', batch, train=train, objectives=names)
        assert enc['image_tokens'].shape[0] == 4 and enc['image_mask'].shape[0] == pairs
        out = {}
        for name in names:
            kwargs = dict(negatives=negatives) if name == 'itm' else {}
            view = _one_copy_per_text(enc, batch['patch_mask'], name) if copies else enc
            out[name] = objectives.get(name, 'region')(
                bound, view, batch, jax.random.key(1), config.objectives[name], **kwargs)[0]
        return sum(out.values()), out

    shared, copies = (jax.jit(jax.value_and_grad(lambda p, c=c: losses(p, c), has_aux=True))(
        params) for c in (False, True))
    for name in names:
        np.testing.assert_allclose(shared[0][1][name], copies[0][1][name], rtol=1e-5,
                                   err_msg=name)
    flat_shared = jax.tree_util.tree_leaves_with_path(shared[1])
    for (path, a), b in zip(flat_shared, jax.tree.leaves(copies[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
