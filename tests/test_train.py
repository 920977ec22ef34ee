"""The training program: exact resume from Orbax checkpoints, restore onto another mesh."""

import jax
import numpy as np
import pytest

from configs import xfm_base
from xfm_jax import checkpoint as checkpoint_lib
from xfm_jax import partitioning, train, train_step as ts
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


def _params(workdir, config):
    model = build_model(config.model)
    tx, _ = ts.make_optimizer(config)
    abstract = jax.eval_shape(lambda r: ts.create_train_state(model, tx, r), jax.random.key(0))
    mesh = partitioning.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    shardings = partitioning.state_shardings(abstract, mesh, partitioning.get_rules('dp'))
    manager = checkpoint_lib.Checkpoints(str(workdir / 'checkpoints'), config)
    state, _ = manager.restore_latest(abstract, shardings)
    manager.close()
    return state


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    full = train.train(_config(4), str(tmp_path / 'full'))
    train.train(_config(2), str(tmp_path / 'resumed'))  # stops after step 2, checkpointed
    resumed = train.train(_config(4), str(tmp_path / 'resumed'))  # restores step 2, runs 3-4
    assert resumed['loss'] == full['loss']
    # Written on 8 devices, restored onto 1: parameters are bitwise equal.
    a = _params(tmp_path / 'full', _config(4))
    b = _params(tmp_path / 'resumed', _config(4))
    assert int(a.step) == int(b.step) == 4
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert len(jax.devices()) == 8 and len(jax.tree.leaves(a.params)[0].devices()) == 1


def test_non_finite_loss_stops_with_step_and_objective(tmp_path):
    config = _config(2)
    config.optimizer.learning_rate = float('inf')  # the first update makes every param non-finite
    with pytest.raises(FloatingPointError, match=r'step 2'):
        train.train(config, str(tmp_path))
