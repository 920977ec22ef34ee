"""The evaluation program end to end: a TrainState checkpoint written by Orbax from an 8-device
mesh, its params alone restored onto 1 device, evaluators run, metrics written."""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from xfm_jax import checkpoint as checkpoint_lib
from xfm_jax import convert, evaluate, partitioning, train_step as ts
from xfm_jax.models.model import build_model


@pytest.fixture(scope='module')
def saved(eval_config, random_arrays, tmp_path_factory):
    """(workdir, params as numpy) of a step-7 checkpoint written from a data=8 mesh."""
    config = eval_config.copy_and_resolve_references()
    config.checkpoint.save_on_sigterm = False
    mesh = partitioning.make_mesh({'data': 8, 'fsdp': 1, 'tensor': 1})
    assert mesh.devices.size == 8
    model = build_model(config.model)
    tx, _ = ts.make_optimizer(config)
    abstract = jax.eval_shape(lambda r: ts.create_train_state(model, tx, r), jax.random.key(0))
    shardings = partitioning.state_shardings(abstract, mesh, partitioning.get_rules('dp'))
    state = random_arrays(abstract, shardings)
    workdir = str(tmp_path_factory.mktemp('run'))
    checkpoints = checkpoint_lib.Checkpoints(os.path.join(workdir, 'checkpoints'), config)
    checkpoints.save(7, state, {'consumed': {}}, force=True)
    checkpoints.wait()
    checkpoints.close()
    return workdir, jax.device_get(state.params)


def _one_device(config):
    mesh = partitioning.make_mesh(config.partitioning.mesh, jax.devices()[:1])
    return mesh, partitioning.get_rules(config.partitioning.rules)


def _assert_restores_on_one_device(config, directory, expected):
    mesh, rules = _one_device(config)
    abstract, shardings = partitioning.param_shardings(build_model(config.model), mesh, rules)
    _assert_same(checkpoint_lib.restore_params(directory, abstract, shardings), expected, mesh)


def _assert_same(restored, expected, mesh):
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(restored),
                                 jax.tree.leaves(expected)):
        assert got.sharding.mesh.devices.size == mesh.devices.size, path
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=str(path))


def test_params_only_restore_onto_one_device(eval_config, saved):
    workdir, params = saved
    location = checkpoint_lib.locate(workdir)
    assert (os.fspath(location.tree), location.step, location.kind) == (
        os.path.join(workdir, 'checkpoints', '7', 'state'), 7, 'train')
    # the step describes itself: the run config it was saved with
    assert location.description['config']['model'] == json.loads(
        eval_config.model.to_json_best_effort())
    _assert_restores_on_one_device(eval_config, location, params)


def test_evaluate_writes_json_and_tensorboard(eval_config, saved, tmp_path):
    workdir, _ = saved
    config = eval_config.copy_and_resolve_references()
    config.evaluate.evaluators = 'retrieval'
    config.evaluate.retrieval.max_images = 8
    out = str(tmp_path)
    results = evaluate.evaluate(config, out, os.path.join(workdir, 'checkpoints', '7'),
                                devices=jax.devices()[:1])
    with open(os.path.join(out, 'eval_step7.json')) as f:
        written = json.load(f)
    assert written['step'] == 7 and written['metrics'] == results
    assert results['retrieval/num_images'] == 8
    assert results['retrieval/chance/t2i_r5'] == pytest.approx(100 * 5 / 8)
    assert any(name.startswith('events.out') for name in os.listdir(f'{out}/tensorboard'))
    assert os.path.isfile(os.path.join(out, 'retrieval_gallery_step7.png'))


def test_converted_checkpoint(eval_config, saved, tmp_path):
    _, params = saved
    convert.save_converted(str(tmp_path), params, {'format': 'xfm',
                                                   'model': eval_config.model.to_dict()})
    location = checkpoint_lib.locate(str(tmp_path / 'params'))
    # model_config.json holds the model section (JSON: tuples come back as lists).
    assert (os.fspath(location.tree), location.step) == (str(tmp_path / 'params'), 0)
    assert location.description['model'] == json.loads(json.dumps(eval_config.model.to_dict()))
    _assert_restores_on_one_device(eval_config, location, params)


def test_mismatched_model_and_bad_paths_are_named(eval_config, saved, tmp_path):
    workdir, _ = saved
    config = eval_config.copy_and_resolve_references()
    config.model.embed_dim = 8  # the checkpoint's projections are 16 wide
    mesh, rules = _one_device(config)
    abstract, shardings = partitioning.param_shardings(build_model(config.model), mesh, rules)
    with pytest.raises(ValueError, match=r'vision_proj/dense/kernel: stored \(32, 16\), '
                                         r'model \(32, 8\)'):
        checkpoint_lib.restore_params(workdir, abstract, shardings)
    with pytest.raises(FileNotFoundError, match=f'{tmp_path}: no checkpoint here'):
        checkpoint_lib.locate(str(tmp_path))


def test_random_init_is_the_training_initialisation(eval_config):
    """--random_init evaluates exactly the params a training run with the same seed starts from,
    sharded over 8 devices; it refuses a checkpoint as well."""
    config = eval_config.copy_and_resolve_references()
    model = build_model(config.model)
    mesh = partitioning.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
    params = partitioning.random_params(model, mesh, partitioning.get_rules('fsdp_tp'), seed=3)
    tx, _ = ts.make_optimizer(config)
    start = jax.jit(lambda r: ts.create_train_state(model, tx, r))(jax.random.key(3))
    expected = jax.device_get(nn.unbox(start.params))
    _assert_same(params, expected, mesh)
    with pytest.raises(ValueError, match='either --checkpoint or --random_init'):
        evaluate.evaluate(config, '/tmp/unused', '/tmp/x', random_init=True)


def test_export_reads_a_training_step_and_its_model(saved, tmp_path):
    """`convert --export` of a training workdir: its newest step's params in reference names,
    with the model config the step stores (no model flags given); importing the file back
    gives the same params."""
    import torch
    from xfm_jax.convert import files, tree
    from xfm_jax.convert.__main__ import main
    workdir, params = saved
    main(['--export', f'--input={workdir}', f'--output={tmp_path / "step7.pth"}'])
    exported = torch.load(tmp_path / 'step7.pth', weights_only=True)
    assert 'vision_encoder.blocks.0.attn.qkv.weight' in exported['model']
    main([f'--input={tmp_path / "step7.pth"}', f'--output={tmp_path / "back"}'])
    restored, _ = files.load_converted(str(tmp_path / 'back'))
    got, want = tree.flatten(restored), tree.flatten(params)
    assert got.keys() == want.keys()
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
