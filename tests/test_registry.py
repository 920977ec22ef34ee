"""A stream or an objective is one record plus its registry entry: registered from here, the
step trains it, the FLOPs count it and the checks name it, with no other module edited."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import xfm_base
from xfm_jax import flops, objectives, streams, train_step as ts
from xfm_jax.models.model import build_model
from xfm_jax.objectives import Objective
from xfm_jax.streams import image_text

_TOY_ROW_FLOPS = 1000  # what the toy claims per pair row


def _agreement(model, enc, batch, rng, settings):
    """Toy objective: 1 - mean cosine of each pair's image and text embeddings (both are
    L2-normalised), scaled by its ``settings.scale``."""
    del batch, rng
    cosine = jnp.sum(enc['image_embedding'] * enc['text_embedding'], axis=-1)
    loss = settings.scale * (1.0 - jnp.mean(cosine))
    return loss, {'agreement_cosine': jnp.mean(cosine)}


TOY = Objective(name='agreement', loss=_agreement,
                needs=frozenset({'image_embedding', 'text_embedding'}), kinds=('pairs',),
                flops=lambda d, rows, settings: rows.pairs * _TOY_ROW_FLOPS)


@pytest.fixture
def registered(monkeypatch):
    """The toy objective and a toy stream (image_text's record under another name)."""
    monkeypatch.setitem(objectives.OBJECTIVES, TOY.name, TOY)
    monkeypatch.setitem(streams.STREAMS, 'captions',
                        dataclasses.replace(image_text.STREAM, name='captions'))


def _magnitude(tree) -> float:
    return sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(tree))


def _toy_config():
    config = xfm_base.get_config('tiny')
    for stream in list(config.streams):
        if stream != 'image_text':
            del config.streams[stream]
    config.streams.image_text = {'agreement': 1.0}
    config.objectives.agreement = {'scale': 2.0}
    config.train.schedule = 'summed'
    config.model.text.dropout = 0.0  # deterministic, to recompute the loss independently
    config.model.vision.drop_path_rate = 0.0
    return config


def test_a_registered_objective_is_trained_and_counted(registered):
    config = _toy_config()
    model = build_model(config.model)
    tx, _ = ts.make_optimizer(config)
    params = nn.unbox(ts.create_train_state(model, tx, jax.random.key(0))).params
    vision, text = config.model.vision, config.model.text
    shape = streams.batch_shape(config, 'image_text')
    batch = streams.synthetic_batch(
        'image_text', np.random.default_rng(0), vocab_size=text.vocab_size, pad_id=text.pad_id,
        mask_id=text.mask_id, num_masked_patches=config.objectives.mim.num_masked,
        image_size=vision.image_size, patch_size=vision.patch_size, **shape)
    loss_fn = ts.make_loss_fn(model, config, ('image_text',))
    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, {'image_text': batch}, jax.random.key(1))

    # The same loss from the model's own encoders, in numpy.
    apply = lambda method, *args: np.asarray(model.apply(  # noqa: E731
        {'params': params}, *args, method=method))
    image = apply('image_embedding', apply('encode_image', batch['image']))
    texts = apply('text_embedding', apply('encode_text', batch['input_ids'],
                                          batch['attention_mask']))
    cosine = (image * texts).sum(-1).mean()
    np.testing.assert_allclose(metrics['image_text/agreement_loss'], 2.0 * (1 - cosine),
                               rtol=1e-5)
    np.testing.assert_allclose(metrics['image_text/agreement_cosine'], cosine, rtol=1e-5)
    np.testing.assert_allclose(loss, metrics['image_text/agreement_loss'])
    # It trains the towers it reads, and nothing it does not (the fusion).
    assert _magnitude(grads['vision_proj']) > 0 and _magnitude(grads['text_proj']) > 0
    assert _magnitude(grads['fusion_encoder']) == 0

    # FLOPs: the shared encodings it needs and its own count, from the model's formulas.
    d = flops.Dims.from_config(config.model)
    pairs, length = shape['batch'], shape['text_len']
    forward = (pairs * (flops.vision_forward(d) + flops.text_forward(d, length)
                        + flops.projection_forward(d)) + 2 * pairs * pairs * d.embed_dim
               + pairs * _TOY_ROW_FLOPS)
    assert flops.train_step_flops(config, {'image_text': shape})['image_text'] == 3 * forward


def test_a_registered_stream_takes_the_objectives_its_fields_allow(registered):
    assert objectives.stream_objectives('captions') == ('itc', 'itm', 'imlm', 'mim', 'agreement')
    assert objectives.stream_objectives('text') == ('mlm',)
    specs = streams.field_specs('captions', batch=2, text_len=5, image_size=32, patch_size=8)
    assert specs['image'] == ((2, 32, 32, 3), 'uint8') and specs['mim_mask'][0] == (2, 16)
    assert ts.update_groups(_with_captions(xfm_base.get_config('tiny')))[0][-1] == 'captions'
    with pytest.raises(ValueError, match=r"'agreement' does not apply to stream 'image'"):
        objectives.get('agreement', 'image')
    with pytest.raises(ValueError, match=r"'box' does not apply to stream 'captions'"):
        objectives.get('box', 'captions')


def _with_captions(config):
    """The config's streams and 'captions', summed into one update (in the registry's order)."""
    config.streams.captions = {'itc': 1.0}
    config.train.schedule = 'summed'
    return config


def test_every_stream_names_its_data_stages():
    """The data side of each record resolves: its raw-record map and both augmentation stages,
    and the fields it passes through are fields of its batch contract."""
    for record in streams.STREAMS.values():
        for path in (record.record, record.augment, record.finalize):
            assert callable(streams.resolve(path)), (record.name, path)
        assert set(record.passthrough) <= set(record.fields), record.name
