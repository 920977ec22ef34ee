"""Shared fixtures: the synthetic TFDS data built once per session, with the network forbidden."""

import socket

import pytest


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
    """Builds every xfm_synthetic config used by the tiny presets, offline; returns the dir."""
    import tensorflow_datasets as tfds

    from xfm_jax.data import tasks
    tfds.disable_progress_bar()
    path = str(tmp_path_factory.mktemp('tfds'))
    patch = pytest.MonkeyPatch()

    def refuse(*args, **kwargs):
        raise OSError('network access is forbidden while building data sets')

    patch.setattr(socket.socket, 'connect', refuse)
    patch.setattr(socket, 'create_connection', refuse)
    try:
        for name in ('xfm_synthetic_scenes', 'xfm_synthetic_clips', 'xfm_synthetic_sentences'):
            tasks.load_builder(tasks.SOURCES[name], path)
    finally:
        patch.undo()
    return path
