"""Bad settings stop every program at once with one line naming the flag or key (exit status 2),
and every shipped config passes :func:`xfm_jax.cli.validate`."""

import importlib
import os
import re
import subprocess
import sys

import pytest

from xfm_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize('module, arg', [
    ('configs.xfm_base', ''), ('configs.xfm_base', 'runlocal'), ('configs.xfm_base', 'tiny'),
    ('configs.xfm_base', 'mini'), ('configs.x2vlm_base', 'mini'), ('configs.x2vlm_base', ''), ('configs.x2vlm_large', 'runlocal'),
    ('configs.finetune.vqa', ''), ('configs.finetune.retrieval', 'tiny'),
    ('configs.finetune.glue', 'tiny'), ('configs.finetune.nlvr', ''),
    ('configs.finetune.image_classification', 'tiny'), ('configs.finetune.sentiment', '')])
def test_shipped_configs_are_valid(module, arg):
    cli.validate(importlib.import_module(module).get_config(arg))


@pytest.mark.parametrize('key, value, message', [
    ('train.grad_accum_steps', 0, 'config.train.grad_accum_steps=0 must be >= 1'),
    ('train.log_every', 0, 'config.train.log_every=0 must be >= 1'),
    ('checkpoint.every_steps', -1, 'config.checkpoint.every_steps=-1 must be >= 1'),
    ('checkpoint.keep', 0, 'config.checkpoint.keep=0 must be >= 1'),
    ('batch.image_text.batch_size', 0, 'config.batch.image_text.batch_size=0 must be >= 1'),
    ('evaluate.batch_size', 0, 'config.evaluate.batch_size=0 must be >= 1'),
    ('evaluate.mlp_probe.eval_every', 0, 'config.evaluate.mlp_probe.eval_every=0 must be'),
    ('checkpoint.keep_every', -5, 'config.checkpoint.keep_every=-5 must be >= 0'),
    ('optimizer.warmup_steps', 100, 'config.optimizer.warmup_steps=100 must be below '
                                    'config.train.total_steps=100'),
    # 8 rows per stream do not split into 3 micro-batches.
    ('train.grad_accum_steps', 3, 'config.batch.image.batch_size=8 is not divisible by '
                                  'config.train.grad_accum_steps=3'),
])
def test_validate_names_the_key(key, value, message):
    from configs import xfm_base
    config = xfm_base.get_config('tiny')
    section, *rest = key.split('.')
    node = config[section]
    for part in rest[:-1]:
        node = node[part]
    node[rest[-1]] = value
    with pytest.raises(ValueError, match='^' + re.escape(message)):
        cli.validate(config)


@pytest.mark.parametrize('key, value', [
    ('region.caption_rate', 1.5), ('region.caption_rate', -0.5), ('image_text.mlm.prob', -0.1)])
def test_validate_wants_rates_in_0_1(key, value):
    from configs import xfm_base
    config = xfm_base.get_config('runlocal')  # 'tiny' has no data section
    *path, leaf = key.split('.')
    node = config.data.streams
    for part in path:
        node = node[part]
    node[leaf] = value
    with pytest.raises(ValueError, match='^' + re.escape(
            f'config.data.streams.{key}={value!r} must be a number in [0, 1]')):
        cli.validate(config)


def test_validate_wants_integers():
    # ConfigDicts refuse a float for an int field; plain dicts (library callers) are checked.
    with pytest.raises(ValueError, match=r"^config\.train\.log_every=2\.5 must be an integer"):
        cli.validate({'train': {'log_every': 2.5}})
    with pytest.raises(ValueError, match=r"^config\.checkpoint\.keep=True must be an integer"):
        cli.validate({'checkpoint': {'keep': True}})


def test_finetune_zero_batch_and_negative_eval_interval():
    from configs.finetune import vqa
    config = vqa.get_config('tiny')
    config.train.eval_batch_size = 0
    with pytest.raises(ValueError, match=r'config\.train\.eval_batch_size=0'):
        cli.validate(config)
    config.train.update(eval_batch_size=8, eval_every=-1)
    with pytest.raises(ValueError, match=r'config\.train\.eval_every=-1 must be >= 0'):
        cli.validate(config)


# A subprocess per program (each imports jax: a few seconds apiece), each with a different kind
# of fault: wrong type, unknown key, a zero count, a config file missing or failing, a bad
# argparse value.
PROGRAMS = [
    (['xfm_jax.train', '--config=configs/xfm_base.py:tiny', '--workdir=W',
      '--config.train.total_steps=abc'], 'total_steps=abc'),
    (['xfm_jax.evaluate', '--config=configs/xfm_base.py:tiny', '--workdir=W',
      '--config.evaluate.nonexistent=1'], "unknown config key 'nonexistent'"),
    (['xfm_jax.finetune', '--config=configs/finetune/vqa.py:tiny', '--workdir=W',
      '--config.train.batch_size=0'], 'config.train.batch_size=0 must be >= 1'),
    (['xfm_jax.aot', '--config=configs/xfm_base.py:tiny', '--topology=v5e:2x2',
      '--config.checkpoint.every_steps=0'], 'config.checkpoint.every_steps=0 must be >= 1'),
    (['xfm_jax.train', '--config=configs/nonexistent.py', '--workdir=W'],
     "No such file or directory: 'configs/nonexistent.py'"),
    (['xfm_jax.train', '--config=configs/xfm_base.py:bogus', '--workdir=W'],
     "ValueError: Unknown config preset 'bogus'"),
    (['xfm_jax.convert', '--input=x.th', '--output=OUT', '--format=nonsense'],
     "--format: invalid choice: 'nonsense'"),
]


@pytest.fixture(scope='module')
def program_runs(tmp_path_factory):
    """Every case of PROGRAMS started at once (they wait on imports, not on each other), then
    collected: {index: (workdir, exit status, stderr)}."""
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
    started = {}
    for i, (argv, _) in enumerate(PROGRAMS):
        workdir = tmp_path_factory.mktemp(f'program{i}')
        argv = [a.replace('=W', f'={workdir}') for a in argv]
        started[i] = workdir, subprocess.Popen([sys.executable, '-m', *argv], cwd=ROOT, env=env,
                                               stdout=subprocess.DEVNULL,
                                               stderr=subprocess.PIPE, text=True)
    runs = {}
    for i, (workdir, process) in started.items():
        _, stderr = process.communicate(timeout=300)
        runs[i] = workdir, process.returncode, stderr
    return runs


@pytest.mark.parametrize('index', range(len(PROGRAMS)),
                         ids=[f'{p[0][0]}-{i}' for i, p in enumerate(PROGRAMS)])
def test_every_program_fails_with_one_line(program_runs, index):
    workdir, returncode, stderr = program_runs[index]
    # TensorFlow's C++ start-up notes may precede it (programs that import TF); ours is the one
    # FATAL line, last, and no traceback.
    lines = stderr.strip().splitlines()
    assert returncode == 2, stderr
    assert [line for line in lines if line.startswith('FATAL ')] == lines[-1:], stderr
    assert PROGRAMS[index][1] in lines[-1] and 'Traceback' not in stderr
    assert not os.listdir(workdir)  # stopped before writing anything
