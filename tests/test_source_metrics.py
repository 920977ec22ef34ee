"""Training metrics split by source where a stream's mixture mixes several tasks: each batch row
names its task (the ``source`` field), the step reports each objective's loss on each source's
rows, and the logging window weighs rows as the loss does."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from configs import xfm_base
from xfm_jax import curves, streams, summaries, train, train_step as ts
from xfm_jax.objectives import RowLosses

from tests.small_runs import runlocal_image_text

SCENES = ('xfm_synthetic_scenes', 'xfm_synthetic_scenes_vqa')  # runlocal's image-text sources


def test_only_mixed_streams_are_split():
    assert ts.source_names(xfm_base.get_config('runlocal')) == {'image_text': SCENES}
    assert ts.source_names(xfm_base.get_config('tiny')) == {}  # random batches: one source
    config = xfm_base.get_config('runlocal')
    assert streams.sources(config.data, 'image_text') == tuple(
        f'{name}_image_text' for name in SCENES)
    assert streams.source_name('fortunes_text', 'text') == 'fortunes'


def test_the_window_weighs_each_source_by_its_rows():
    """Step 1: rows (loss, weight) of sources a, b, a = (1, 1), (4, 2), (3, 3); step 2: one row
    of b, (10, 1), and none of a. Window: a = (1 + 9) / 4, b = (8 + 10) / 3, whatever the steps'
    shares; a scalar metric stays the plain mean of its steps."""
    window = summaries.WindowAverage()
    steps = [(RowLosses(jnp.array([1.0, 4.0, 3.0]), jnp.array([1.0, 2.0, 3.0])),
              jnp.array([0, 1, 0]), 2.0),
             (RowLosses(jnp.array([10.0]), jnp.array([1.0])), jnp.array([1]), 6.0)]
    for rows, source, loss in steps:
        metrics = summaries.by_source('image_text/itc_loss', rows, source, ('a', 'b'))
        window.add({'image_text/itc_loss': jnp.float32(loss), **metrics})
    assert window.result() == pytest.approx({'image_text/itc_loss': 4.0,
                                             'image_text/itc_loss/a': 10 / 4,
                                             'image_text/itc_loss/b': 18 / 3})
    window.reset()
    window.add(summaries.by_source('image_text/itc_loss', *steps[1][:2], ('a', 'b')))
    assert window.result() == pytest.approx({'image_text/itc_loss/b': 10.0})  # no rows of a


def test_region_texts_take_their_image_rows_source():
    """R = B * K rows: row r belongs to batch row r // K."""
    rows = RowLosses(jnp.arange(6, dtype=jnp.float32), jnp.ones(6))
    split = summaries.means(summaries.by_source('region/box_loss', rows, jnp.array([1, 0, 1]),
                                                ('a', 'b')))
    assert split == pytest.approx({'region/box_loss/a': (2 + 3) / 2,
                                   'region/box_loss/b': (0 + 1 + 4 + 5) / 4})


@pytest.fixture(scope='module')
def mixed_run_config(tmp_path_factory):
    """The runlocal X-FM on its image-text stream only (scenes captions and scenes questions),
    ITC + MIM, 8 pairs a batch, one step a logging window (the first step's is not written:
    it holds the compilation); no held-out evaluation."""
    config = runlocal_image_text(tmp_path_factory.mktemp('tfds'), {'itc': 1.0, 'mim': 1.0},
                                 total_steps=3, log_every=1, eval_every=0, warmup_steps=1)
    config.evaluate.evaluators = ''
    return config


def _batch_sources(config, steps: int) -> list[np.ndarray]:
    """Each step's ``source`` field, read again (the same seed gives the same batches); the
    first batch's is checked against the reader's own count of each task's records."""
    from xfm_jax.data import pipeline
    batches = pipeline.make_streams(config.data, seed=config.train.seed)
    out = [np.asarray(next(batches)['image_text']['source'])]
    read = batches.state()['streams']['image_text']['tasks']  # {task: [records, per host]}
    out += [np.asarray(next(batches)['image_text']['source']) for _ in range(steps - 1)]
    batches.close()
    tasks = streams.sources(config.data, 'image_text')
    np.testing.assert_array_equal(np.bincount(out[0], minlength=len(tasks)),
                                  [read[task][0] for task in tasks])
    return out


@pytest.mark.slow  # one train-step compile and the input pipeline twice: ~2 min on 2 busy cores
def test_a_mixed_stream_reports_each_source(mixed_run_config, tmp_path):
    config = mixed_run_config
    train.train(config, str(tmp_path))
    scalars = curves.read_scalars(tmp_path / 'tensorboard')
    summary = json.loads((tmp_path / train.METRICS_FILE).read_text())['metrics']
    sources = _batch_sources(config, config.train.total_steps)
    assert np.unique(np.concatenate(sources)).tolist() == [0, 1], 'both sources appear'
    assert sorted(scalars['train/image_text/itc_loss']) == [2, 3]
    for step, source in enumerate(sources[1:], start=2):
        # ITC and MIM weigh every image-text row 1, so a source's weight is its row count.
        counts = np.bincount(source, minlength=len(SCENES))
        for objective in ('itc', 'mim'):
            tag = f'train/image_text/{objective}_loss'
            split = {name: scalars[f'{tag}/{name}'][step]
                     for name, count in zip(SCENES, counts) if count}
            assert len(split) == np.count_nonzero(counts), (step, tag)
            weighted = sum(counts[SCENES.index(name)] * value for name, value in split.items())
            assert weighted / counts.sum() == pytest.approx(scalars[tag][step], rel=1e-5)
            if step == len(sources):  # the last step's metrics, in metrics.json too
                assert {f'{tag[6:]}/{name}': value for name, value in split.items()} == (
                    pytest.approx({k: v for k, v in summary.items()
                                   if k.startswith(f'{tag[6:]}/')}, rel=1e-6))
    assert not any(tag.startswith('train/image_text/itc_accuracy/') for tag in scalars)
