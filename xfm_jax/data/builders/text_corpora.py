"""``xfm_text_corpora``: text-only corpora from installed Debian packages.

Configs:
  ``wordnet_glosses`` (``apt-get install wordnet-base``): one example per WordNet 3.0 synset,
    "{first lemma}: {gloss}" from /usr/share/wordnet/data.{noun,verb,adj,adv} (117,659).
  ``fortunes`` (``apt-get install fortunes``): one example per fortune of the files in
    /usr/share/games/fortunes/*.u8 (text between lines holding only '%').
Splits: every 10th example (in file order) -> validation, the rest train.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

import tensorflow_datasets as tfds

from xfm_jax.data.builders import schema

_WORDNET_PARTS = ('noun', 'verb', 'adj', 'adv')


@dataclasses.dataclass
class CorpusConfig(tfds.core.BuilderConfig):
    source_dir: str = ''
    install: str = ''


def wordnet_glosses(directory: str, install: str):
    """Yields (key, text) per synset line ("offset lex_filenum ss_type w_cnt word lex_id ... | gloss")."""
    for part in _WORDNET_PARTS:
        path = schema.require(os.path.join(directory, f'data.{part}'), install, 'WordNet data')
        with open(path, encoding='utf-8') as f:
            for line in f:
                if line.startswith('  '):  # the licence header
                    continue
                head, _, gloss = line.partition(' | ')
                fields = head.split()
                yield f'{part}-{fields[0]}', f'{fields[4].replace("_", " ")}: {gloss.strip()}'


def fortunes(directory: str, install: str):
    """Yields (key, text) per fortune of the UTF-8 files (``*.u8``); whitespace-only pieces (the
    text after the final '%') are part of the format, not records."""
    schema.require(directory, install, 'fortunes folder')
    for path in sorted(glob.glob(os.path.join(directory, '*.u8'))):
        with open(path, encoding='utf-8') as f:
            pieces = re.split(r'^%$', f.read(), flags=re.MULTILINE)
        name = os.path.basename(path).removesuffix('.u8')
        for i, piece in enumerate(pieces):
            if piece.strip():
                yield f'{name}-{i}', piece.strip()


_READERS = {'wordnet_glosses': wordnet_glosses, 'fortunes': fortunes}


class XfmTextCorpora(tfds.core.GeneratorBasedBuilder):
    """WordNet glosses and fortunes as text-only corpora."""

    VERSION = tfds.core.Version('1.0.0')
    BUILDER_CONFIGS = [
        CorpusConfig(name='wordnet_glosses', source_dir='/usr/share/wordnet',
                     install='apt-get install wordnet-base'),
        CorpusConfig(name='fortunes', source_dir='/usr/share/games/fortunes',
                     install='apt-get install fortunes'),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(features=schema.text_features(),
                                              metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        del dl_manager  # reads the installed files
        config = self.builder_config
        schema.require(config.source_dir, config.install, f'{config.name} source folder')
        return {split: self._generate_examples(split) for split in ('train', 'validation')}

    def _generate_examples(self, split: str):
        config = self.builder_config
        log = schema.drop_log(self, split)
        reader = _READERS[config.name](config.source_dir, config.install)
        for i, (key, text) in enumerate(reader):
            if (i % 10 == 0) != (split == 'validation'):
                continue
            if not text:
                log.add('empty_text', key)
                continue
            yield key, {'text': text}
