"""Every objective's per-row losses average back to its loss: the per-source training metrics
(train_step, summaries.by_source) weigh rows exactly as the loss does."""

import jax
import numpy as np

from xfm_jax import objectives


def test_every_objective_has_a_per_row_form():
    for name, objective in objectives.OBJECTIVES.items():
        assert objective.with_rows is not None, name


def _unequal_weights(stream: str, batch: dict) -> dict:
    """Region rows that count for some objectives and not others: a padding text (no loss at
    all) and a whole-image caption (no box)."""
    if stream == 'region':
        batch['text_valid'][0, 1] = 0.0
        batch['box_valid'][0, 1] = 0.0
        batch['box_valid'][1, 0] = 0.0
    return batch


def test_weighted_row_losses_are_the_loss(tiny, make_batch):
    config, model, params = tiny('xfm')
    for stream in ('text', 'image', 'image_text', 'region'):
        names = objectives.stream_objectives(stream)
        batch = _unequal_weights(stream, make_batch(config, stream, batch=4, region_texts=3))

        def run(p, b, stream=stream, names=names):
            bound = model.bind({'params': p})
            enc = objectives.encode_stream(bound, stream, b, train=False, objectives=names)
            out = {}
            for i, name in enumerate(names):
                args = (bound, enc, b, jax.random.key(i), config.objectives[name])
                loss, _, rows = objectives.OBJECTIVES[name].with_rows(*args)
                out[name] = (loss, objectives.get(name, stream)(*args)[0], rows)
            return out

        for name, (loss, plain_loss, rows) in jax.jit(run)(params, batch).items():
            where = f'{stream}/{name}'
            # The loss itself is the one the step trains on.
            assert np.asarray(loss) == np.asarray(plain_loss), where
            row_loss, weight = np.asarray(rows.loss, np.float64), np.asarray(rows.weight)
            assert row_loss.shape == weight.shape and row_loss.shape[0] % 4 == 0, where
            assert (weight >= 0).all() and weight.sum() > 0, where
            assert np.isfinite(row_loss).all() and (row_loss[weight == 0] == 0).all(), where
            np.testing.assert_allclose((weight * row_loss).sum() / weight.sum(), loss,
                                       rtol=1e-6, atol=1e-6, err_msg=where)


def test_region_rows_follow_their_texts(tiny, make_batch):
    """A region row is one text (K per image): a padding text weighs 0 for every objective,
    and box rows also drop whole-image captions; MIM (image rows) does not apply there."""
    config, model, params = tiny('xfm')
    batch = _unequal_weights('region', make_batch(config, 'region', batch=4, region_texts=3))
    names = ('itc', 'box', 'imlm')

    def run(p, b):
        bound = model.bind({'params': p})
        enc = objectives.encode_stream(bound, 'region', b, train=False, objectives=names)
        return {name: objectives.OBJECTIVES[name].with_rows(
            bound, enc, b, None, config.objectives[name])[2].weight for name in names}

    weights = jax.jit(run)(params, batch)
    np.testing.assert_array_equal(weights['itc'], batch['text_valid'].reshape(-1))
    np.testing.assert_array_equal(weights['box'],
                                  (batch['text_valid'] * batch['box_valid']).reshape(-1))
    masked = (batch['mlm_weights'] * batch['text_valid'][..., None]).sum(-1).reshape(-1)
    np.testing.assert_array_equal(weights['imlm'], masked)
