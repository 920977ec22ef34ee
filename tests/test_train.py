"""The training program in process: exact resume from Orbax checkpoints, restore onto another
mesh, initialisation from another checkpoint, non-finite values. Subprocess runs (signals,
several processes, command-line errors): test_train_program.py."""

import logging
import os

import flax
import jax
import numpy as np
import pytest

from configs import xfm_base
from xfm_jax import checkpoint as checkpoint_lib
from xfm_jax import convert, partitioning, train, train_step as ts
from xfm_jax.models.model import build_model


def _config(total_steps):
    """Tiny X-FM on the cheap streams (text MLM, image MIM) with random contract batches."""
    config = xfm_base.get_config('tiny')
    for stream in ('image_text', 'region'):
        del config.streams[stream]
    config.model.scan_layers = True
    config.train.update(total_steps=total_steps, log_every=2)
    config.optimizer.warmup_steps = 1
    config.checkpoint.update(every_steps=2, async_save=False)
    return config


def _abstract_state(config):
    model = build_model(config.model)
    tx, _ = ts.make_optimizer(config)
    return model, tx, jax.eval_shape(lambda r: ts.create_train_state(model, tx, r),
                                     jax.random.key(0))


def _params(workdir, config):
    """The newest checkpoint's train state, restored onto one device."""
    _, _, abstract = _abstract_state(config)
    mesh = partitioning.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    shardings = partitioning.state_shardings(abstract, mesh, partitioning.get_rules('dp'))
    manager = checkpoint_lib.Checkpoints(os.path.join(workdir, 'checkpoints'), config)
    state, _ = manager.restore_latest(abstract, shardings)
    manager.close()
    return state


def _fresh_params(config, seed):
    """Unboxed initial params of ``config``'s model from ``seed``, as numpy, flat by name."""
    model, tx, _ = _abstract_state(config)
    state = jax.jit(ts.unboxed_state_init(model, tx))(jax.random.key(seed))
    return flax.traverse_util.flatten_dict(jax.device_get(state.params), sep='/')


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    full = train.train(_config(4), str(tmp_path / 'full'))
    train.train(_config(2), str(tmp_path / 'resumed'))  # stops after step 2, checkpointed
    resumed = train.train(_config(4), str(tmp_path / 'resumed'))  # restores step 2, runs 3-4
    assert resumed['loss'] == full['loss']
    # Written on 8 devices, restored onto 1: parameters are bitwise equal.
    a = _params(str(tmp_path / 'full'), _config(4))
    b = _params(str(tmp_path / 'resumed'), _config(4))
    assert int(a.step) == int(b.step) == 4
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert len(jax.devices()) == 8 and len(jax.tree.leaves(a.params)[0].devices()) == 1


def test_non_finite_step_raises_before_its_checkpoint(tmp_path):
    config = _config(2)
    config.checkpoint.every_steps = 1  # step 1 is due for a save, but not for a log line
    config.optimizer.learning_rate = float('inf')  # the first update makes the params non-finite
    with pytest.raises(FloatingPointError, match=r'Non-finite .*param .* at step 1;'):
        train.train(config, str(tmp_path))
    assert not [d for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit()]


def test_init_from_converted_checkpoint(tmp_path, caplog):
    """A fresh run takes every parameter the converted checkpoint stores with the same name and
    shape; an absent one, one of another shape and the excluded ones keep their initialisation."""
    config = _config(2)
    source = _fresh_params(config, seed=7)
    absent, reshaped = 'temp', 'text_encoder/embeddings/word_embeddings/embedding'
    assert absent in source and reshaped in source
    excluded = [k for k in source if k.startswith('itm_head/')]
    assert excluded
    stored = {k: v for k, v in source.items() if k != absent}
    stored[reshaped] = np.zeros((3, 5), np.float32)
    convert.save_converted(str(tmp_path / 'converted'), flax.traverse_util.unflatten_dict(
        stored, sep='/'), {'format': 'xfm', 'model': config.model.to_dict()})

    config.train.update(init_from=str(tmp_path / 'converted'), init_exclude='^itm_head/')
    config.optimizer.learning_rate = 0.0  # the steps leave the params as initialised
    with caplog.at_level(logging.INFO):
        train.train(config, str(tmp_path / 'run'))
    params = flax.traverse_util.flatten_dict(
        jax.device_get(_params(str(tmp_path / 'run'), config).params), sep='/')
    fresh = _fresh_params(config, seed=config.train.seed)
    kept = {absent, reshaped, *excluded}
    for name, value in params.items():
        np.testing.assert_array_equal(value, (fresh if name in kept else source)[name], name)
    assert f'{len(source) - len(kept)} parameters loaded' in caplog.text
    assert f'{len(kept)} parameters fresh' in caplog.text
    assert f'{reshaped} (stored (3, 5), model {source[reshaped].shape})' in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and 'init_from' in r.getMessage()]  # the counts, not only in INFO
    assert any(f'{len(source) - len(kept)} of {len(source)} parameters loaded, 2 unmatched'
               in w for w in warnings), warnings


def test_init_from_train_checkpoint_onto_a_sharded_state(tmp_path):
    """A step directory of a training run: its params land on the shardings of the new state."""
    config = _config(2)
    model, tx, abstract = _abstract_state(config)
    mesh = partitioning.make_mesh(dict(data=2, fsdp=4, tensor=1))
    shardings = partitioning.state_shardings(abstract, mesh, partitioning.get_rules('fsdp'))
    init = jax.jit(ts.unboxed_state_init(model, tx), out_shardings=shardings)
    saved = init(jax.random.key(7))
    checkpoints = checkpoint_lib.Checkpoints(str(tmp_path / 'checkpoints'), config)
    checkpoints.save(3, saved, force=True)
    checkpoints.wait()
    checkpoints.close()

    params, loaded, fresh = checkpoint_lib.load_matching_params(
        str(tmp_path / 'checkpoints' / '3'), init(jax.random.key(8)).params)
    assert not fresh and len(loaded) == len(jax.tree.leaves(params))
    for got, want, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(saved.params),
                                   jax.tree.leaves(shardings.params)):
        assert got.sharding == sharding
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert any(not s.is_fully_replicated for s in jax.tree.leaves(shardings.params))
    # the workdir itself names its newest step; a directory without checkpoints is refused
    np.testing.assert_array_equal(
        jax.tree.leaves(checkpoint_lib.load_matching_params(str(tmp_path), params)[0])[0],
        jax.tree.leaves(saved.params)[0])
    with pytest.raises(FileNotFoundError, match='no checkpoint here'):
        checkpoint_lib.load_matching_params(str(tmp_path / 'checkpoints' / '3' / 'state'), params)
