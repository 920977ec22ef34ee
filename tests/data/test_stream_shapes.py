"""One source of truth for stream shapes: an override of ``config.batch.<stream>.<key>`` or of the
model's image size reaches the input pipeline's batches and the FLOPs count alike."""

import pytest

from configs import common, x2vlm_base, xfm_base
from xfm_jax import flops, streams
from xfm_jax.data import pipeline


def _sizes(config):
    """What xfm_jax.train hands the FLOPs count: the shapes in config.batch."""
    return {s: streams.batch_shape(config, s) for s in config.streams}


@pytest.mark.parametrize('key, value', [('batch_size', 16), ('text_len', 12)])
def test_a_batch_override_reaches_data_and_flops(key, value):
    config = xfm_base.get_config('runlocal')
    before = flops.train_step_flops(config, _sizes(config))['image_text']
    setattr(config.batch.image_text, key, value)
    assert config.data.streams.image_text[key] == value
    after = flops.train_step_flops(config, _sizes(config))['image_text']
    assert after != before
    config.batch.region.region_texts = 2
    assert config.data.streams.region.region_texts == 2
    video = x2vlm_base.get_config('runlocal')
    video.model.video_frames = 3  # the frame embedding, the batches and the FLOPs together
    assert video.batch.video.frames == video.data.streams.video.frames == 3


def test_caption_length_of_a_run_without_image_text():
    """The evaluators tokenise at the run's caption length: image_text's, else the first stream
    with captions (a region-only run), else a one-line error."""
    config = xfm_base.get_config('runlocal')
    config.batch.image_text.text_len, config.batch.region.text_len = 12, 9
    assert streams.text_length(config) == 12
    config.unlock()
    del config.data.streams.image_text
    assert streams.text_length(config) == 9
    for stream in ('region', 'image'):
        del config.data.streams[stream]
    with pytest.raises(ValueError, match="no 'image_text' stream nor any other with captions"):
        streams.text_length(config)


def test_the_pipeline_yields_the_overridden_shapes(data_dir):
    config = xfm_base.get_config('runlocal')
    config.data.tfds_data_dir = data_dir
    config.data.vocab.path = f'{data_dir}/vocab_shapes.txt'
    config.batch.image_text.update(batch_size=4, text_len=12)
    config.batch.region.update(batch_size=2, region_texts=2)
    config.model.vision.image_size = 48  # the data is resized with the model
    assert config.data.image_size == 48
    streams = pipeline.make_streams(config.data, seed=0)
    batch = next(streams)
    streams.close()
    assert batch['image_text']['image'].shape[:3] == (4, 48, 48)
    assert batch['image_text']['input_ids'].shape == (4, 12)
    assert batch['region']['box'].shape == (2, 2, 4)
    assert batch['region']['patch_mask'].shape == (2, 2, (48 // 8) ** 2)


def test_a_run_without_the_default_evaluation_stream_fails_before_training(tmp_path):
    """A region-only run whose grounding evaluation names no source fails at once with the
    one-line error, not at its first evaluation after minutes of training."""
    from xfm_jax import train
    config = xfm_base.get_config('runlocal')
    config.unlock()
    common.keep_streams(config, ['region'])
    config.evaluate.update(during_training='grounding', evaluators='grounding')
    with pytest.raises(ValueError, match="no 'image_text' stream to take the evaluation source"):
        train.train(config, str(tmp_path / 'run'))
    assert not (tmp_path / 'run' / 'checkpoints').exists()
    config.evaluate.grounding.source = 'xfm_synthetic_scenes'
    train._check_evaluation_sources(config, 'grounding')  # named: nothing to resolve


def test_a_misspelt_final_evaluator_fails_before_training(tmp_path):
    """The evaluators after training are checked with those during it, before anything
    compiles: an unknown name, or one without its settings section, is a one-line error."""
    from xfm_jax import train
    config = xfm_base.get_config('runlocal')
    config.evaluate.evaluators = 'retrieval,grounding_'
    with pytest.raises(ValueError, match="config.evaluate.evaluators names unknown evaluator "
                                         "'grounding_'"):
        train.train(config, str(tmp_path / 'run'))
    assert not (tmp_path / 'run' / 'checkpoints').exists()
    config.unlock()
    del config.evaluate.grounding
    config.evaluate.evaluators = 'grounding'
    with pytest.raises(ValueError, match="names 'grounding', which has no settings section "
                                         'config.evaluate.grounding'):
        train._check_evaluation_sources(config, '')
