"""Small real-data training configs shared by the program-level tests."""

from configs import xfm_base


def runlocal_image_text(directory, objectives: dict, *, total_steps: int, log_every: int,
                        eval_every: int, warmup_steps: int):
    """The runlocal X-FM on its image-text stream only (the synthetic scenes' captions and
    questions, built into ``directory``), 8 pairs a batch, one checkpoint at the end, written
    synchronously; ``objectives`` are the stream's loss weights."""
    from xfm_jax.data import tasks
    tasks.load_builder(tasks.SOURCES['xfm_synthetic_scenes'], str(directory))
    config = xfm_base.get_config('runlocal')
    config.data.tfds_data_dir = str(directory)
    config.data.vocab.path = str(directory / 'vocab.txt')
    for stream in ('text', 'image', 'region'):
        del config.streams[stream], config.data.streams[stream], config.batch[stream]
    config.streams.image_text = objectives
    config.batch.image_text.batch_size = 8
    config.train.update(total_steps=total_steps, log_every=log_every, eval_every=eval_every)
    config.optimizer.warmup_steps = warmup_steps
    config.checkpoint.update(every_steps=total_steps, async_save=False, save_on_sigterm=False)
    return config
