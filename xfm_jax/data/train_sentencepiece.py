r"""Trains a SentencePiece model usable as this project's vocabulary (seqio.SentencePieceVocabulary).

  python -m xfm_jax.data.train_sentencepiece --corpus=texts.txt --output=/tmp/spm \
      --vocab_size=8000

writes /tmp/spm.model and /tmp/spm.vocab. Special ids: <pad>=0, <s>=1 (start), </s>=2 (end),
<unk>=3, <mask>=4. Training with ``--config.data.vocab.kind=sentencepiece
--config.data.vocab.path=/tmp/spm.model`` sets model.text's vocab_size and special ids from it
(``tasks.fit_model_to_vocabulary``)."""

from __future__ import annotations

import os

from absl import app, flags

RESERVED_IDS = dict(pad_id=0, bos_id=1, eos_id=2, unk_id=3)
MASK_PIECE = '<mask>'  # user-defined symbol: gets id 4, right after the control symbols

_CORPUS = flags.DEFINE_multi_string('corpus', None, 'Text file(s), one sentence per line.')
_OUTPUT = flags.DEFINE_string('output', None, 'Output prefix: writes PREFIX.model, PREFIX.vocab.')
_VOCAB_SIZE = flags.DEFINE_integer('vocab_size', 8000, 'Number of pieces.')
_MODEL_TYPE = flags.DEFINE_enum('model_type', 'unigram', ['unigram', 'bpe', 'word', 'char'],
                                'SentencePiece model type.')
_LOWER = flags.DEFINE_bool('lower_case', True, 'Lower-case the corpus (as uncased BERT).')


def train(corpus: list[str], output: str, *, vocab_size: int = 8000, model_type: str = 'unigram',
          lower_case: bool = True) -> str:
    """Trains and returns the path of ``output.model``."""
    import sentencepiece as spm
    for path in corpus:
        if not os.path.exists(path):
            raise FileNotFoundError(f'--corpus file {path!r} does not exist.')
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=','.join(corpus), model_prefix=output, vocab_size=vocab_size,
        model_type=model_type, user_defined_symbols=[MASK_PIECE], hard_vocab_limit=False,
        normalization_rule_name='nmt_nfkc_cf' if lower_case else 'nmt_nfkc',
        pad_piece='<pad>', bos_piece='<s>', eos_piece='</s>', unk_piece='<unk>',
        minloglevel=2, **RESERVED_IDS)
    return output + '.model'


def main(argv):
    del argv
    if not _CORPUS.value or not _OUTPUT.value:
        raise app.UsageError('--corpus and --output are required.')
    print(train(_CORPUS.value, _OUTPUT.value, vocab_size=_VOCAB_SIZE.value,
                model_type=_MODEL_TYPE.value, lower_case=_LOWER.value))


if __name__ == '__main__':
    app.run(main)
