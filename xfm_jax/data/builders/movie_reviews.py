"""``xfm_movie_reviews``: 10,605 movie-review sentences with human sentiment scores in [-4, 4]
(Hutto & Gilbert, ICWSM 2014; the sentences of Pang & Lee's SST source), SST-2-like:
``label`` = positive if score > 0 else negative (5,242 positive).

The file ships inside the vaderSentiment 3.3.2 source distribution
(``additional_resources/hutto_ICWSM_2014.tar.gz``). The builder reads the sdist at ``sdist``;
without one it looks in ``$XFM_DOWNLOAD_DIR`` (default ``~/.cache/xfm_jax``) and, if absent,
runs the pip download there (needs network access to PyPI), else fails naming the command.
Splits: sentence id % 10 == 0 -> validation (1,060), the rest train (9,545).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import tensorflow_datasets as tfds

from xfm_jax.data.builders import schema

SDIST = 'vaderSentiment-3.3.2.tar.gz'
INSTALL = 'pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d {dir}'
_INNER = (f'{SDIST[:-len(".tar.gz")]}/additional_resources/hutto_ICWSM_2014.tar.gz',
          'hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt')
LABELS = ('negative', 'positive')


def download_dir() -> str:
    return os.environ.get('XFM_DOWNLOAD_DIR', os.path.expanduser('~/.cache/xfm_jax'))


def fetch_sdist(directory: str) -> str:
    """Runs the pip download into ``directory``; FileNotFoundError naming it when that fails."""
    command = INSTALL.format(dir=directory)
    os.makedirs(directory, exist_ok=True)
    result = subprocess.run([sys.executable, '-m', *command.split()], capture_output=True,
                            text=True, timeout=300)
    path = os.path.join(directory, SDIST)
    if result.returncode or not os.path.exists(path):
        raise FileNotFoundError(f'Could not fetch {SDIST} ({result.stderr.strip()[-300:]}). '
                                f'Run where PyPI is reachable: {command} and pass the file as '
                                f"builder kwarg sdist (or place it in {directory}).")
    return path


def read_sentences(sdist: str) -> list[tuple[int, float, str]]:
    """(sentence id, mean score, sentence) from the tab-separated ground-truth file."""
    with tarfile.open(sdist) as outer:
        inner = tarfile.open(fileobj=io.BytesIO(outer.extractfile(_INNER[0]).read()))
        lines = inner.extractfile(_INNER[1]).read().decode('utf-8').splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split('\t')
        if len(fields) != 3:
            raise ValueError(f'{sdist}:{_INNER[1]} line {number}: expected 3 tab-separated '
                             f'fields (id, score, sentence), got {len(fields)}: {line[:80]!r}')
        rows.append((int(fields[0]), float(fields[1]), fields[2].strip()))
    return rows


class XfmMovieReviews(tfds.core.GeneratorBasedBuilder):
    """Movie-review sentences with a sentiment score and a binary label."""

    VERSION = tfds.core.Version('1.0.0')

    def __init__(self, *, sdist: str | None = None, **kwargs):
        self.sdist = sdist
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                **schema.text_features(),
                'score': tfds.features.Scalar(dtype=np.float32),
                'label': tfds.features.ClassLabel(names=LABELS),
            }),
            metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        del dl_manager  # the sdist is fetched by pip, not by tfds
        if self.sdist is not None:
            sdist = schema.require(self.sdist, INSTALL.format(dir=os.path.dirname(self.sdist)),
                                   'vaderSentiment sdist')
        else:
            sdist = os.path.join(download_dir(), SDIST)
            if not os.path.exists(sdist):
                sdist = fetch_sdist(download_dir())
        rows = read_sentences(sdist)
        return {'train': self._generate_examples([r for r in rows if r[0] % 10], 'train'),
                'validation': self._generate_examples([r for r in rows if r[0] % 10 == 0],
                                                      'validation')}

    def _generate_examples(self, rows, split: str):
        log = schema.drop_log(self, split)
        for sentence_id, score, text in rows:
            if not text:
                log.add('empty_text', f'sentence {sentence_id}')
                continue
            yield str(sentence_id), {'text': text, 'score': score, 'label': int(score > 0)}
