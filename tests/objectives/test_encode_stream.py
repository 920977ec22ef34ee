"""The pair view built by encode_stream, checked against the batch with numpy."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import x2vlm_base, xfm_base
from xfm_jax import objectives
from xfm_jax.models.model import abstract_variables, build_model


def test_region_pair_view(tiny, make_batch):
    config, model, params = tiny('xfm')
    batch = make_batch(config, 'region', batch=2, region_texts=3)
    batch['text_valid'][1, 2] = 0.0
    enc = jax.jit(lambda p, b: objectives.encode_stream(
        model.bind({'params': p}), 'region', b, train=False, objectives=('itc', 'box')))(
            params, batch)
    rows = 6
    np.testing.assert_array_equal(enc['input_ids'], batch['input_ids'].reshape(rows, -1))
    np.testing.assert_array_equal(enc['image_id'], np.repeat(batch['image_id'], 3))
    np.testing.assert_array_equal(enc['valid'], batch['text_valid'].reshape(rows))
    np.testing.assert_array_equal(enc['box'], batch['box'].reshape(rows, 4))

    full = np.asarray(model.apply({'params': params}, batch['image'],
                                  method=model.encode_image))  # [2, 1+N, D]
    patch_mask = batch['patch_mask'].reshape(rows, -1)
    # The image tokens once per image; each text names its image.
    np.testing.assert_allclose(enc['image_tokens'], full, atol=1e-5)
    np.testing.assert_array_equal(enc['image_index'], [0, 0, 0, 1, 1, 1])
    # Region token: mean of the box's patch tokens; keys: itself + the box's patches.
    patches = np.repeat(full[:, 1:], 3, axis=0)
    region = (patches * patch_mask[..., None]).sum(1) / patch_mask.sum(1, keepdims=True)
    np.testing.assert_allclose(enc['region_token'], region, atol=1e-5)
    np.testing.assert_array_equal(enc['image_mask'][:, 0], 1)
    np.testing.assert_array_equal(enc['image_mask'][:, 1:], patch_mask)
    assert enc['image_embedding'].shape == enc['text_embedding'].shape == (rows, 16)


def test_only_what_the_objectives_read_is_encoded(tiny, make_batch):
    config, model, params = tiny('xfm')
    batch = make_batch(config, 'region', batch=2)
    bound = model.bind({'params': params})
    shapes = lambda names: jax.eval_shape(  # noqa: E731
        lambda b: objectives.encode_stream(bound, 'region', b, train=False, objectives=names),
        batch)
    box_only = shapes(('box',))
    assert {'image_tokens', 'image_index', 'text_hidden'} <= set(box_only)
    assert not {'region_token', 'image_mask', 'image_embedding', 'text_embedding'} & set(box_only)
    imlm_only = shapes(('imlm',))
    assert {'image_tokens', 'image_index', 'region_token', 'image_mask'} <= set(imlm_only)
    assert not {'text_hidden', 'text_embedding'} & set(imlm_only)


def test_mim_needs_a_mask_token(make_batch):
    config = x2vlm_base.get_config('tiny')
    model = build_model(config.model)  # the check comes before any parameter is read
    with pytest.raises(ValueError, match=r"mim on stream 'image_text'.*use_mask_token"):
        objectives.encode_stream(model, 'image_text', make_batch(config, 'image_text'),
                                 train=False, objectives=('itc', 'mim'))


@pytest.mark.parametrize('config_module', [xfm_base, x2vlm_base], ids=['xfm', 'x2vlm'])
def test_every_configured_stream_traces_in_training_mode(config_module, make_batch):
    """Shapes only (no compile): every stream with its configured objectives, dropout on."""
    config = config_module.get_config('tiny')
    config.objectives.itm.negative_groups = 1
    model = build_model(config.model)
    params = nn.unbox(abstract_variables(model))['params']
    for stream, weights in config.streams.items():
        names = tuple(weights)

        def losses(p, batch, stream=stream, names=names):
            bound = model.bind({'params': p}, rngs={'dropout': jax.random.key(0)})
            enc = objectives.encode_stream(bound, stream, batch, train=True, objectives=names)
            return {name: objectives.get(name, stream)(bound, enc, batch, jax.random.key(1),
                                                       config.objectives[name])
                    for name in names}

        for name, (loss, metrics) in jax.eval_shape(
                losses, params, make_batch(config, stream)).items():
            assert loss.shape == () and loss.dtype == np.float32, (stream, name)
            assert metrics and all(m.shape == () for m in metrics.values()), (stream, name)
