"""partitioning.setup_state, the sharded-state setup every program shares, on a small flax
model with logical axes and an AdamW state (8 simulated devices): initialised values equal an
unsharded init, every leaf placed on the shardings of ``state_shardings``; a restore wins over
the init and hands back its extra output; no restore result means initialise."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xfm_jax import partitioning
from xfm_jax.train_step import TrainState


class _Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
        kernel = nn.with_logical_partitioning(nn.initializers.normal(1.0), ('embed', 'mlp'))
        return nn.Dense(16, kernel_init=kernel, use_bias=False)(x)


def _init(rng):
    params = _Mlp().init(rng, jnp.zeros((1, 8)))['params']
    tx = optax.adamw(1e-3)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


@pytest.fixture(scope='module')
def mesh_rules():
    mesh = partitioning.make_mesh({'data': 2, 'fsdp': 4, 'tensor': 1})
    return mesh, partitioning.get_rules('fsdp')


def test_init_equals_an_unsharded_init_on_the_state_shardings(mesh_rules):
    mesh, rules = mesh_rules
    setup = partitioning.setup_state(_init, mesh, rules, seed=5)
    assert not setup.restored and setup.extra is None
    expected = jax.device_get(nn.unbox(_init(jax.random.key(5))))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(setup.state), expected)
    shardings = partitioning.state_shardings(jax.eval_shape(_init, jax.random.key(0)), mesh,
                                             rules)
    jax.tree.map(lambda x, s: x.sharding.is_equivalent_to(s, x.ndim) or pytest.fail(str(s)),
                 setup.state, shardings)
    kernel = setup.state.params['Dense_0']['kernel']
    assert kernel.sharding.spec == jax.sharding.PartitionSpec('fsdp', None)  # embed -> fsdp
    assert setup.state.opt_state[0].mu['Dense_0']['kernel'].sharding == kernel.sharding
    shapes = partitioning.placed_shapes(setup.abstract, setup.shardings)
    assert shapes.params['Dense_0']['kernel'] == jax.ShapeDtypeStruct(
        (8, 16), jnp.float32, sharding=kernel.sharding)


def test_a_restore_wins_and_none_means_initialise(mesh_rules):
    mesh, rules = mesh_rules
    seen = {}

    def restore(abstract, shardings):
        seen['abstract'], seen['shardings'] = abstract, shardings
        state = jax.tree.map(lambda x, s: jax.device_put(np.full(x.shape, 7, x.dtype), s),
                             nn.unbox(abstract), shardings)
        return state, {'position': 3}

    setup = partitioning.setup_state(_init, mesh, rules, seed=5, restore=restore)
    assert setup.restored and setup.extra == {'position': 3}
    assert seen['shardings'] is setup.shardings and seen['abstract'] is setup.abstract
    assert all(np.all(np.asarray(x) == 7) for x in jax.tree.leaves(setup.state))
    fresh = partitioning.setup_state(_init, mesh, rules, seed=5, restore=lambda *_: None)
    assert not fresh.restored
    np.testing.assert_array_equal(
        fresh.state.params['Dense_0']['kernel'],
        nn.unbox(_init(jax.random.key(5))).params['Dense_0']['kernel'])
