"""What each objective trains (docs/design.md §8): X-FM's stop-gradient and MIM's target."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xfm_jax import objectives


def _objective_grads(config, model, params, stream, batch, names):
    """{name: d(loss of that objective alone)/d(params)} with the stream encoded once, as in
    training: one forward pass, one backward pass per objective (jacrev), one jit. Dropout off:
    it does not change which parameters a loss reaches, and it triples the compile time."""

    def losses(p):
        bound = model.bind({'params': p})
        enc = objectives.encode_stream(bound, stream, batch, train=False, objectives=names)
        return jnp.stack([
            objectives.get(name, stream)(bound, enc, batch, jax.random.key(index),
                                         config.objectives[name])[0]
            for index, name in enumerate(names)])

    jacobian = jax.jit(jax.jacrev(losses))(params)
    return {name: jax.tree.map(lambda g, i=index: g[i], jacobian)
            for index, name in enumerate(names)}


def _max_abs(tree):
    return max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(tree))


def test_xfm_stop_gradient_keeps_fusion_losses_off_the_language_encoder(tiny, make_batch):
    config, model, params = tiny('xfm')
    assert config.model.stop_gradient_text
    region = _objective_grads(config, model, params, 'region', make_batch(config, 'region'),
                              ('itc', 'itm', 'imlm', 'box'))
    for name in ('itm', 'imlm', 'box'):
        for path, leaf in jax.tree_util.tree_leaves_with_path(region[name]['text_encoder']):
            assert not np.any(leaf), (name, jax.tree_util.keystr(path))
        # ...while the fusion encoder does learn from them (the zeros are not a dead graph).
        assert _max_abs(region[name]['fusion_encoder']) > 0, name
    assert _max_abs(region['itc']['text_encoder']) > 0
    text = _objective_grads(config, model, params, 'text', make_batch(config, 'text'), ('mlm',))
    assert _max_abs(text['mlm']['text_encoder']) > 0


@pytest.mark.parametrize('family', ['xfm', 'x2vlm'])
def test_without_stop_gradient_fusion_losses_train_the_language_encoder(family, tiny, make_batch):
    config, model, params = tiny(family, stop_gradient_text=False)
    grads = _objective_grads(config, model, params, 'region', make_batch(config, 'region'),
                             ('itm', 'imlm', 'box'))
    for name in ('itm', 'imlm', 'box'):
        # The encoder layers themselves, not just a head shared with the fusion MLM (X²-VLM).
        assert _max_abs(grads[name]['text_encoder']['encoder']) > 0, name


def test_mim_target_carries_no_gradient(tiny, make_batch):
    """The gradient equals the one computed with the unmasked pass fed in as a constant."""
    config, model, params = tiny('xfm')
    batch = make_batch(config, 'image')
    settings = config.objectives.mim

    def mim_loss(p, target=None):
        bound = model.bind({'params': p})
        enc = objectives.encode_stream(bound, 'image', batch, train=False, objectives=('mim',))
        if target is not None:
            enc['image_tokens'] = target
        return objectives.get('mim', 'image')(bound, enc, batch, None, settings)[0]

    constant_target = model.apply({'params': params}, batch['image'], method=model.encode_image)
    grads, grads_constant = jax.jit(lambda p: (jax.grad(mim_loss)(p),
                                               jax.grad(mim_loss)(p, constant_target)))(params)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_constant)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert _max_abs(grads['vision_encoder']) > 0
