"""What training writes to watch it learn: window averages (clu.metrics), ITM's prior, held-out
evaluation every ``train.eval_every`` steps with its galleries, and the curves PNG."""

import json
import math
import os

import jax
import numpy as np
import pytest
from PIL import Image

from xfm_jax import curves, partitioning, summaries, train, train_step as ts

from tests.small_runs import runlocal_image_text


def test_itm_prior_by_hand():
    # 1 positive : 2 negatives: always 'no match' is right 2/3 of the time; predicting 1/3
    # costs -(1/3 ln 1/3 + 2/3 ln 2/3) = ln 3 - 2/3 ln 2.
    prior = summaries.itm_prior(2)
    assert prior['prior_accuracy'] == pytest.approx(2 / 3)
    assert prior['prior_loss'] == pytest.approx(math.log(3) - 2 / 3 * math.log(2))
    assert prior['prior_loss'] == pytest.approx(0.6365, abs=1e-4)
    assert summaries.itm_prior(1) == pytest.approx({'prior_accuracy': 0.5,
                                                    'prior_loss': math.log(2)})
    # Beside every ITM loss: a pre-training stream's and fine-tuning's.
    metrics = {'image_text/itm_loss': 0.7, 'region/itc_loss': 2.0, 'itm_loss': 0.5}
    assert summaries.with_itm_prior(metrics) == {
        **metrics, 'image_text/itm_prior_loss': prior['prior_loss'],
        'image_text/itm_prior_accuracy': prior['prior_accuracy'],
        'itm_prior_loss': prior['prior_loss'], 'itm_prior_accuracy': prior['prior_accuracy']}


def test_window_average_is_the_mean_of_the_steps_since_reset():
    mesh = partitioning.make_mesh({'data': 8, 'fsdp': 1, 'tensor': 1})
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    window = summaries.WindowAverage()
    assert window.result() == {}
    for loss, accuracy in ((1.0, 0.0), (2.0, 0.5), (6.0, 1.0)):
        window.add({'loss': jax.device_put(np.float32(loss), replicated),
                    'itm_accuracy': jax.device_put(np.float32(accuracy), replicated)})
    assert window.result() == pytest.approx({'loss': 3.0, 'itm_accuracy': 0.5})
    window.reset()
    window.add({'loss': np.float32(-4.0), 'itm_accuracy': np.float32(0.25)})
    assert window.result() == pytest.approx({'loss': -4.0, 'itm_accuracy': 0.25})


def _write_run(logdir):
    from clu import metric_writers
    first = metric_writers.create_default_writer(str(logdir))
    for step in (1, 2, 3):
        first.write_scalars(step, {'train/loss': 10.0 - step,
                                   'train/image_text/itm_loss': 0.7,
                                   'train/image_text/itm_prior_loss': 0.6365})
    first.write_scalars(2, {'eval/retrieval/itc/t2i_r1': 12.5,
                            'eval/retrieval/chance/t2i_r1': 0.5,
                            'eval/grounding/accuracy': 3.5})
    first.write_images(2, {'eval/retrieval/retrieval_gallery': np.zeros((1, 4, 4, 3),
                                                                        np.uint8)})
    first.close()
    # A resumed run writes step 3 again, in a later event file: the later value counts.
    second = metric_writers.create_default_writer(str(logdir))
    second.write_scalars(3, {'train/loss': 4.0})
    second.close()


def test_curves_read_the_scalars_and_draw_the_png(tmp_path):
    _write_run(tmp_path / 'tensorboard')
    scalars = curves.read_scalars(tmp_path / 'tensorboard')
    assert scalars['train/loss'] == pytest.approx({1: 9.0, 2: 8.0, 3: 4.0})
    assert scalars['eval/retrieval/itc/t2i_r1'] == {2: 12.5}
    assert scalars['train/image_text/itm_prior_loss'] == pytest.approx({s: 0.6365
                                                                        for s in (1, 2, 3)})
    assert not any('gallery' in tag for tag in scalars)  # images are not scalars
    assert curves.evaluation_series(scalars) == [  # what the middle panel draws
        ('itc/t2i_r1', 'eval/retrieval/itc/t2i_r1'),
        ('grounding acc@IoU0.5', 'eval/grounding/accuracy')]
    path = curves.draw(tmp_path)
    assert path == str(tmp_path / curves.CURVES_FILE)
    with Image.open(path) as png:
        assert png.size == (15 * 80, int(4.2 * 80))  # figsize x dpi


@pytest.fixture(scope='module')
def data_run_config(tmp_path_factory):
    """The runlocal X-FM on its image-text stream only (ITC + ITM), 8 pairs a batch; held-out
    retrieval on 8 images."""
    config = runlocal_image_text(tmp_path_factory.mktemp('tfds'), {'itc': 1.0, 'itm': 1.0},
                                 total_steps=4, log_every=2, eval_every=2, warmup_steps=2)
    config.evaluate.update(evaluators='retrieval', during_training='retrieval', batch_size=8)
    config.evaluate.retrieval.update(max_images=8, gallery_queries=2)
    return config


def _images(logdir):
    """{tag: steps} of the image summaries in ``logdir``."""
    from tensorboard.backend.event_processing import event_file_loader
    out = {}
    for name in sorted(os.listdir(logdir)):
        for event in event_file_loader.EventFileLoader(os.path.join(logdir, name)).Load():
            for value in event.summary.value:
                if value.HasField('tensor') and value.tensor.dtype == 7:  # DT_STRING: images
                    out.setdefault(value.tag, []).append(event.step)
    return out


@pytest.mark.slow  # compiles the train step and the retrieval evaluator: 2-3 min on 2 busy cores
def test_held_out_evaluation_every_eval_every_steps(data_run_config, tmp_path):
    config = data_run_config
    train.train(config, str(tmp_path))
    for step in (2, 4):  # during training, then the final evaluation
        written = json.loads((tmp_path / f'eval_step{step}.json').read_text())
        assert written['step'] == step and 'retrieval/itc/t2i_r1' in written['metrics']
    scalars = curves.read_scalars(tmp_path / 'tensorboard')
    assert sorted(scalars['eval/retrieval/itc/t2i_r1']) == [2, 4]
    assert _images(tmp_path / 'tensorboard')['eval/retrieval/retrieval_gallery_i2t'] == [2, 4]
    # Window means: the schedule's values at steps 0, 1 (logged at 2) and 2, 3 (logged at 4).
    _, schedule = ts.make_optimizer(config)
    for logged, steps in ((2, (0, 1)), (4, (2, 3))):
        expected = np.mean([float(schedule(s)) for s in steps])
        assert scalars['train/learning_rate'][logged] == pytest.approx(expected, rel=1e-6)
    assert scalars['train/image_text/itm_prior_loss'][4] == pytest.approx(0.6365, abs=1e-4)
    assert scalars['train/image_text/itm_prior_accuracy'][4] == pytest.approx(2 / 3)
    assert set(scalars['train/image_text/itm_accuracy']) == {2, 4}
    assert (tmp_path / curves.CURVES_FILE).is_file()


def test_eval_every_without_held_out_data_fails_before_compiling(tmp_path):
    from configs import xfm_base
    config = xfm_base.get_config('tiny')
    config.train.eval_every = 2
    with pytest.raises(ValueError, match='config.train.eval_every=2 needs held-out data'):
        train.train(config, str(tmp_path))
