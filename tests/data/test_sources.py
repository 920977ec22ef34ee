"""Installed offline sets (easy-VQA, Fashion-MNIST, movie reviews, WordNet glosses, fortunes).

Each test skips when its files are not installed (fresh CI machines); the missing-file tests
install nothing and run everywhere. Expected values come from independent readers (the easy_vqa
package's API, raw IDX bytes, strfile's .dat headers) or published counts.
"""

import glob
import gzip
import importlib.util
import os
import socket
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from xfm_jax.data import tasks
from xfm_jax.data.builders import easy_vqa, fashion_mnist, movie_reviews, text_corpora

_FASHION_DIR = fashion_mnist.DEFAULT_DIR
_WORDNET_DIR, _FORTUNES_DIR = '/usr/share/wordnet', '/usr/share/games/fortunes'


def _vader_sdist():
    for directory in (movie_reviews.download_dir(), '/tmp/vader'):
        path = os.path.join(directory, movie_reviews.SDIST)
        if os.path.exists(path):
            return path
    return None


_INSTALLED = {
    'easy_vqa': importlib.util.find_spec('easy_vqa') is not None,
    'fashion_mnist': os.path.isdir(_FASHION_DIR),
    'movie_reviews': _vader_sdist() is not None,
    'wordnet_glosses': os.path.isdir(_WORDNET_DIR),
    'fortunes': os.path.isdir(_FORTUNES_DIR),
}


def _needs(*names):
    missing = [n for n in names if not _INSTALLED[n]]
    return pytest.mark.skipif(bool(missing), reason=f'not installed: {missing} (docs/data.md)')


def _read(builder, split):
    """A split's records in stored order (the sources are ArrayRecord: tasks.Records)."""
    return tfds.as_numpy(tasks.ordered(tasks.open_records(builder, split)))


@pytest.fixture(scope='module')
def real_dir(tmp_path_factory):
    """A TFDS dir for the installed sets, built lazily per source with the network forbidden."""
    path = str(tmp_path_factory.mktemp('tfds_real'))
    tfds.disable_progress_bar()
    built = {}

    def load(name):
        if name not in built:
            kwargs = {'movie_reviews': {'sdist': _vader_sdist()}} if name == 'movie_reviews' else {}
            source = tasks.sources(_Config(kwargs))[name]
            patch = pytest.MonkeyPatch()
            refuse = lambda *a, **k: (_ for _ in ()).throw(OSError('network forbidden'))  # noqa
            patch.setattr(socket.socket, 'connect', refuse)
            patch.setattr(socket, 'create_connection', refuse)
            try:
                built[name] = tasks.load_builder(source, path)
            finally:
                patch.undo()
        return built[name]
    return load


class _Config(dict):
    """The one field ``tasks.sources`` reads."""

    def __init__(self, builder_kwargs):
        super().__init__(builder_kwargs=builder_kwargs)


def _split_sizes(builder):
    return {name: split.num_examples for name, split in builder.info.splits.items()}


@_needs('easy_vqa')
def test_easy_vqa_against_package_api(real_dir):
    import easy_vqa as package  # the package's own reader: an independent implementation
    builder = real_dir('easy_vqa')
    assert _split_sizes(builder) == {'train': 4000, 'validation': 1000}
    texts, answers, image_ids = package.get_train_questions()
    records = {ex['image_key'].decode(): ex for ex in _read(builder, 'train')}
    assert sum(len(ex['qa']['question']) for ex in records.values()) == len(texts) == 38575
    first = records['train-0']
    expected = [(q, a) for q, a, i in zip(texts, answers, image_ids) if i == 0]
    assert list(zip([q.decode() for q in first['qa']['question']],
                    [a.decode() for a in first['qa']['answer']])) == expected
    # Image 0: "what is the blue shape?" -> rectangle (the questions file's first rows).
    assert [c.decode() for c in first['captions']] == ['a blue rectangle']
    assert first['image'].shape == (64, 64, 3)


@pytest.mark.slow  # builds 70,000 images (~17 s)
@_needs('fashion_mnist')
def test_fashion_mnist_against_raw_idx(real_dir):
    builder = real_dir('fashion_mnist')
    assert _split_sizes(builder) == {'train': 60000, 'validation': 10000}
    with gzip.open(f'{_FASHION_DIR}/train-images-idx3-ubyte.gz') as f:
        header = struct.unpack('>4i', f.read(16))
        first_pixels = np.frombuffer(f.read(28 * 28), np.uint8).reshape(28, 28)
    assert header == (2051, 60000, 28, 28)
    labels = []
    for ex in _read(builder, 'validation'):
        labels.append(ex['label'])
    assert np.bincount(labels).tolist() == [1000] * 10  # the test set is balanced
    first = next(ex for ex in _read(builder, 'train')
                 if ex['image_key'] == b'train-0')
    # Training image 0 is an ankle boot (label 9).
    assert first['label'] == 9 and first['captions'][0] == b'a photo of an ankle boot'
    assert (first['image'][..., 0] == first['image'][..., 2]).mean() > 0.9  # grey stored as RGB
    assert np.abs(first['image'].mean(-1) - first_pixels).mean() < 4  # JPEG round trip


@_needs('movie_reviews')
def test_movie_reviews_labels(real_dir):
    builder = real_dir('movie_reviews')
    assert _split_sizes(builder) == {'train': 9545, 'validation': 1060}
    rows = list(_read(builder, 'train')) + list(_read(builder, 'validation'))
    assert sum(int(r['label']) for r in rows) == 5242  # scores > 0 in the ground-truth file
    assert all(r['label'] == (r['score'] > 0) for r in rows)
    tepid = next(r for r in rows if r['text'] == b'Effective but too tepid biopic')  # id 3
    assert tepid['label'] == 0 and tepid['score'] == pytest.approx(-0.6)


@_needs('wordnet_glosses', 'fortunes')
def test_text_corpora_counts(real_dir):
    wordnet = real_dir('wordnet_glosses')
    # WordNet 3.0 synsets: 82,115 nouns + 13,767 verbs + 18,156 adjectives + 3,621 adverbs.
    assert sum(_split_sizes(wordnet).values()) == 117659
    first = next(iter(_read(wordnet, 'validation')), None)
    texts = {ex['text'] for ex in _read(wordnet, 'validation')}
    assert first is not None and (b'entity: that which is perceived or known or inferred to have '
                                  b'its own distinct existence (living or nonliving)' in texts)
    fortunes = real_dir('fortunes')
    # strfile writes each file's fortune count into the .dat header (version, count, ...).
    expected = 0
    for path in glob.glob(f'{_FORTUNES_DIR}/*.dat'):
        with open(path, 'rb') as f:
            expected += struct.unpack('>2I', f.read(8))[1]
    assert sum(_split_sizes(fortunes).values()) == expected


def test_missing_files_name_the_install_command(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist'):
        fashion_mnist.read_idx(str(tmp_path / 'train-images-idx3-ubyte.gz'), 2051)
    with pytest.raises(FileNotFoundError, match='apt-get install wordnet-base'):
        next(text_corpora.wordnet_glosses(str(tmp_path), 'apt-get install wordnet-base'))
    builder = tfds.builder('xfm_movie_reviews', data_dir=str(tmp_path),
                           sdist=str(tmp_path / movie_reviews.SDIST))
    with pytest.raises(FileNotFoundError,
                       match=r'pip download --no-deps --no-binary :all: vaderSentiment==3.3.2'):
        builder.download_and_prepare()
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
    with pytest.raises(FileNotFoundError, match='pip install easy-vqa'):
        easy_vqa.data_root()


@pytest.mark.slow  # builds every installed set (~75 s)
@_needs(*_INSTALLED)
def test_real_tiny_preset_batches(real_dir, data_dir):
    from configs import data as data_configs, xfm_base
    from xfm_jax import streams as contract
    from xfm_jax.data import pipeline
    model = xfm_base.get_config('tiny').model
    model.text.mask_id = min(model.text.mask_id, model.text.vocab_size - 1)
    config = data_configs.data_config('real_tiny', model)
    for name in _INSTALLED:  # build the real sets next to the synthetic ones
        real_dir(name)
    real_root = os.path.dirname(real_dir('easy_vqa').data_dir.rstrip('/').rsplit('/', 1)[0])
    for name in os.listdir(real_root):
        if not os.path.exists(os.path.join(data_dir, name)):
            os.symlink(os.path.join(real_root, name), os.path.join(data_dir, name))
    config.tfds_data_dir = data_dir
    config.vocab.path = f'{data_dir}/vocab_real_tiny.txt'
    config.builder_kwargs = {'movie_reviews': {'sdist': _vader_sdist()}}
    streams = pipeline.make_streams(config, seed=0)
    batch = next(streams)
    streams.close()
    for stream, fields in batch.items():
        s = config.streams[stream]
        specs = contract.field_specs(stream, batch=s.batch_size, text_len=s.get('text_len', 1),
                                     image_size=config.image_size, patch_size=config.patch_size,
                                     region_texts=s.get('region_texts', 1), frames=1)
        assert {k: (v.shape, v.dtype) for k, v in fields.items()} == {
            k: (shape, np.dtype(dtype)) for k, (shape, dtype) in specs.items()}, stream
