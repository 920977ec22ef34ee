"""Sharding layouts pinned by golden PartitionSpecs, written by hand, on a (2, 2, 2) CPU mesh."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs.common import optimizer_config
from xfm_jax import optim, partitioning

MESH_2x2x2 = dict(data=2, fsdp=2, tensor=2)


def _boxed(names, init=nn.initializers.normal(0.02)):
    return nn.with_logical_partitioning(init, names)


class _Block(nn.Module):
    """One scanned layer: its kernel gets a leading 'layers' axis."""

    @nn.compact
    def __call__(self, x, _):
        mlp = nn.Dense(8, kernel_init=_boxed(('embed', 'mlp')), use_bias=False, name='mlp')
        return mlp(x), None


class _TinyModel(nn.Module):
    @nn.compact
    def __call__(self, ids):  # ids: [B, L] int
        x = nn.Embed(16, 8, embedding_init=_boxed(('vocab', 'embed')), name='embed')(ids)
        x = nn.with_logical_constraint(x, ('batch', 'length', 'act_embed'))
        q = nn.DenseGeneral((2, 4), kernel_init=_boxed(('embed', 'heads', 'kv')),
                            bias_init=_boxed(('heads', 'kv'), nn.initializers.zeros),
                            name='query')(x)
        x = x + q.reshape(x.shape)
        x = nn.LayerNorm(scale_init=_boxed(('norm',), nn.initializers.ones),
                         bias_init=_boxed(('norm',), nn.initializers.zeros), name='norm')(x)
        x, _ = nn.scan(_Block, variable_axes={'params': 0}, split_rngs={'params': True}, length=2,
                       metadata_params={nn.PARTITION_NAME: 'layers'})(name='layers')(x, None)
        # mlp width 3 is not divisible by tensor=2: that dim must fall back to replication.
        odd = self.param('odd', _boxed(('embed', 'mlp')), (8, 3))
        temp = self.param('temp', nn.initializers.constant(0.07), ())
        return x @ odd / temp


def _abstract_state():
    """eval_shape of an init that builds params and optimizer state from the boxed params."""
    tx, _ = optim.make_optimizer(optimizer_config(), total_steps=10_000)

    def init(rng):
        params = _TinyModel().init(rng, jnp.zeros((8, 4), jnp.int32))['params']
        return {'params': params, 'opt_state': tx.init(params), 'step': jnp.int32(0)}

    return init, jax.eval_shape(init, jax.random.key(0))


# Golden specs per preset, by param: embedding [vocab, embed], query kernel [embed, heads, kv],
# query bias [heads, kv], norm scale [norm], scanned kernel [layers, embed, mlp],
# odd [embed, mlp=3].
GOLDEN = {
    'dp': dict(embedding=P(None, None), query_kernel=P(None, None, None), query_bias=P(None, None),
               norm_scale=P(None), scanned=P(None, None, None), odd=P(None, None)),
    'fsdp': dict(embedding=P(None, 'fsdp'), query_kernel=P('fsdp', None, None),
                 query_bias=P(None, None), norm_scale=P(None), scanned=P(None, 'fsdp', None),
                 odd=P('fsdp', None)),
    'fsdp_tp': dict(embedding=P('tensor', 'fsdp'), query_kernel=P('fsdp', 'tensor', None),
                    query_bias=P('tensor', None), norm_scale=P(None),
                    scanned=P(None, 'fsdp', 'tensor'), odd=P('fsdp', None)),
}


def _param_specs(params):
    return dict(embedding=params['embed']['embedding'].spec,
                query_kernel=params['query']['kernel'].spec,
                query_bias=params['query']['bias'].spec,
                norm_scale=params['norm']['scale'].spec,
                scanned=params['layers']['mlp']['kernel'].spec,
                odd=params['odd'].spec)


@pytest.mark.parametrize('preset', sorted(GOLDEN))
def test_state_shardings_golden(preset):
    mesh = partitioning.make_mesh(MESH_2x2x2)
    _, abstract = _abstract_state()
    shardings = partitioning.state_shardings(abstract, mesh, partitioning.get_rules(preset))

    assert _param_specs(shardings['params']) == GOLDEN[preset]
    assert shardings['params']['temp'].spec == P()
    assert shardings['step'].spec == P()
    # Adam moments mirror the params; the step count is replicated.
    adam_state = shardings['opt_state'][1]  # chain: clip, adam, decay, lr, multipliers
    assert _param_specs(adam_state.mu) == GOLDEN[preset]
    assert _param_specs(adam_state.nu) == GOLDEN[preset]
    assert adam_state.count.spec == P()


def test_non_divisible_dim_falls_back_and_warns(caplog):
    mesh = partitioning.make_mesh(MESH_2x2x2)
    _, abstract = _abstract_state()
    with caplog.at_level(logging.WARNING):
        shardings = partitioning.state_shardings(abstract, mesh, partitioning.get_rules('fsdp_tp'))
    assert shardings['params']['odd'].spec == P('fsdp', None)
    warnings = [r.getMessage() for r in caplog.records if 'not divisible' in r.getMessage()]
    assert len(warnings) == 1  # one warning for params and both Adam moments
    assert "('mlp', 3, 'tensor')" in warnings[0]


def test_jit_init_places_state_on_the_shardings():
    mesh = partitioning.make_mesh(MESH_2x2x2)
    rules = partitioning.get_rules('fsdp_tp')
    init, abstract = _abstract_state()
    shardings = partitioning.state_shardings(abstract, mesh, rules)
    # Outside sharding_context on purpose: out_shardings alone places the state, while an active
    # mesh would make nn.DenseGeneral constrain its flat [8, 8] kernel with 3-D names and fail.
    state = jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=shardings)(jax.random.key(0))
    kernel = state['params']['query']['kernel']
    assert kernel.sharding.spec == P('fsdp', 'tensor', None)
    assert kernel.addressable_shards[0].data.shape == (4, 1, 4)  # [8, 2, 4] over fsdp, tensor


def test_logical_constraint_inside_jit():
    mesh = partitioning.make_mesh(MESH_2x2x2)
    rules = partitioning.get_rules('fsdp_tp')
    step = jax.jit(lambda x: nn.with_logical_constraint(2 * x, ('batch', 'act_mlp')))
    with partitioning.sharding_context(mesh, rules):
        out = step(jnp.ones((8, 4)))
    assert out.sharding.spec == P(('data', 'fsdp'), 'tensor')


def test_make_mesh_resolves_free_axis_with_auto_axes():
    mesh = partitioning.make_mesh(dict(data=-1, fsdp=2, tensor=1))
    assert dict(mesh.shape) == {'data': 4, 'fsdp': 2, 'tensor': 1}
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 3


@pytest.mark.parametrize('sizes, match', [
    (dict(data=2, fsdp=2, tensor=3), r"mesh \{'data': 2, 'fsdp': 2, 'tensor': 3\} needs 12 "
                                     r'devices, but 8 are available'),
    (dict(data=-1, fsdp=-1, tensor=1), 'at most one -1'),
    (dict(data=-1, fsdp=3, tensor=1), 'not divisible by the fixed axes product 3'),
    (dict(data=2, fsdp=0, tensor=4), 'must be positive'),
    (dict(data=8, fsdp=1, tensor=1, model=1), r"unknown mesh axes \['model'\]"),
])
def test_make_mesh_rejects_bad_sizes(sizes, match):
    with pytest.raises(ValueError, match=match):
        partitioning.make_mesh(sizes)


def test_get_rules_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown partitioning rules preset 'tp'.*'fsdp_tp'"):
        partitioning.get_rules('tp')


def test_shard_batch():
    mesh = partitioning.make_mesh(MESH_2x2x2)
    batch = {'image': np.arange(8 * 3, dtype=np.float32).reshape(8, 3),
             'text': {'ids': np.arange(8 * 2).reshape(8, 2)}}
    sharded = partitioning.shard_batch(batch, mesh)
    assert sharded['image'].sharding == partitioning.batch_sharding(mesh)
    assert sharded['image'].sharding.spec == P(('data', 'fsdp'))
    # 4 batch shards of 2 rows; each shard is replicated over 'tensor'.
    assert {s.data.shape for s in sharded['text']['ids'].addressable_shards} == {(2, 2)}
    np.testing.assert_array_equal(sharded['image'], batch['image'])

    with pytest.raises(ValueError, match=r"\['image'\] of shape \(6, 3\).*not divisible by the 4"):
        partitioning.shard_batch({'image': np.zeros((6, 3))}, mesh)
