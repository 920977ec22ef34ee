"""Each objective alone drives its loss down when over-fitting one fixed tiny batch."""

import jax
import numpy as np
import optax
import pytest

from xfm_jax import objectives

_STEPS = 50

# objective -> (stream, batch size, required final / initial loss ratio). On noise images MIM
# can only fall by making outputs depend less on each patch's own content: a slower descent.
_CASES = {
    'mlm': ('text', 4, 0.5),
    'itc': ('image_text', 8, 0.5),
    'itm': ('image_text', 8, 0.5),
    'imlm': ('image_text', 4, 0.5),
    'box': ('region', 4, 0.5),
    'mim': ('image', 4, 0.75),
}


def _overfit_losses(config, model, params, stream, batch, name):
    """Losses of ``_STEPS`` Adam steps on one batch, all inside one jit (lax.scan)."""
    tx = optax.adam(3e-3)
    settings = config.objectives[name]
    fn = objectives.get(name, stream)

    def loss_fn(p, rng):
        bound = model.bind({'params': p})
        enc = objectives.encode_stream(bound, stream, batch, train=False, objectives=(name,))
        return fn(bound, enc, batch, rng, settings)[0]

    def step(carry, rng):
        p, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(p, rng)
        updates, opt_state = tx.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), loss

    rngs = jax.random.split(jax.random.key(0), _STEPS)  # ITM draws new negatives every step
    run = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), rngs)[1])
    return np.asarray(run(params))


@pytest.mark.parametrize('name', sorted(_CASES))
def test_objective_overfits_one_batch(name, tiny, make_batch):
    stream, batch_size, ratio = _CASES[name]
    config, model, params = tiny('xfm')
    batch = make_batch(config, stream, batch=batch_size)
    losses = _overfit_losses(config, model, params, stream, batch, name)
    assert np.isfinite(losses).all(), losses
    assert losses[-5:].mean() < ratio * losses[:5].mean(), losses
