"""launch/downstream_table.py: the commands it runs and the table it builds from their result
files (finished jobs are read back, not re-run)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'launch', 'downstream_table.py')


@pytest.fixture(scope='module')
def table():
    sys.path.insert(0, os.path.dirname(SCRIPT))  # it imports its sibling jobs.py, as a script
    try:
        import downstream_table as module
        yield module
    finally:
        sys.path.remove(os.path.dirname(SCRIPT))


def test_commands(table):
    jobs, command = {job.name: job for job in table.JOBS}, sys.modules['jobs'].command
    pre = command(jobs['synthetic'], '/ck/600', '/out/a')
    assert pre[1:5] == ['-m', 'xfm_jax.evaluate', '--config=configs/xfm_base.py:runlocal',
                        '--workdir=/out/a']
    assert pre[-1] == '--checkpoint=/ck/600'
    assert command(jobs['synthetic'], None, '/out/b')[-1] == '--random_init'
    assert command(jobs['sentiment'], '/ck/600', '/out/c')[-1] == '--init=/ck/600'
    assert not any(a.startswith('--init') for a in command(jobs['sentiment'], None, '/o'))


def _write(out, name, kind, metrics):
    os.makedirs(os.path.join(out, name))
    if kind == 'finetune':
        content, file = {'eval': metrics}, 'finetune.json'
    else:
        content, file = {'step': 600, 'metrics': metrics}, 'eval_step600.json'
    with open(os.path.join(out, name, file), 'w') as f:
        json.dump(content, f)


def test_table_from_finished_jobs(table, tmp_path, monkeypatch, capsys):
    pretrained, out = tmp_path / 'pre', tmp_path / 'out'
    os.makedirs(pretrained / 'checkpoints' / '600')
    for label, r1, acc in (('pretrained', 4.5, 68.54), ('random', 0.5, 66.6)):
        _write(out, f'synthetic_{label}', 'evaluate', {
            'retrieval/itc/i2t_r1': r1, 'retrieval/itc/t2i_r1': r1 / 2,
            'retrieval/itm/t2i_r1': r1 / 3, 'retrieval/chance/i2t_r1': 0.5,
            'retrieval/chance/t2i_r1': 0.5, 'grounding/accuracy': 2.0,
            'grounding/whole_image_baseline': 0.0})
        _write(out, f'easy_vqa_{label}', 'finetune', {'accuracy': acc,
                                                      'chance/accuracy': 37.33})
    # Offline sets count as absent (as on CI): finished jobs are still read, an unfinished job
    # that needs one is reported with the install command and not run; nothing may run at all.
    monkeypatch.setattr(table, 'missing_set', lambda name: f'not installed: get {name}')
    monkeypatch.setattr(sys.modules['jobs'], 'execute', lambda *a, **k: pytest.fail('ran a job'))
    monkeypatch.setattr(sys, 'argv', ['downstream_table.py', f'--pretrained={pretrained}',
                                      f'--out={out}', '--jobs=synthetic,easy_vqa,fashion_mnist'])
    table.main()
    stdout = capsys.readouterr().out
    assert 'done before' in stdout and ' exit ' not in stdout
    lines = (out / 'table.md').read_text().splitlines()
    assert lines[0].startswith('| task (tiny X-FM, main job checkpoint step 600)')
    rows = {line.split(' | ')[0][2:]: line.split(' | ')[1:] for line in lines[2:]}
    assert rows['synthetic zero-shot retrieval, image->text R@1 (ITC)'] == [
        '4.5 %', '0.5 %', '0.5 % (random ranking) |']
    easy = rows['easy-VQA fine-tuned (answer classifier), accuracy']
    assert easy[:2] == ['68.5 %', '66.6 %'] and easy[2].startswith('37.3 %')
    assert rows['Fashion-MNIST linear probe (frozen), top-1'][0] == \
        'not installed: get fashion_mnist'
    assert not any(k.startswith('movie') for k in rows)  # job not asked for


def test_errors(table, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, SCRIPT, *a], capture_output=True,  # noqa
                                    text=True, timeout=60, cwd=tmp_path)
    missing = run(f'--pretrained={tmp_path}/nothing')
    assert missing.returncode != 0 and 'bash launch/local.sh' in missing.stderr
    os.makedirs(tmp_path / 'pre' / 'checkpoints' / '5')
    unknown = run(f'--pretrained={tmp_path}/pre', '--jobs=synthetic,imagenet')
    assert unknown.returncode != 0 and "['imagenet']" in unknown.stderr
