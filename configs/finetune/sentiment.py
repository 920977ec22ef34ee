r"""Sentence sentiment (SST-2-like, docs/design.md §12 GLUE), language encoder + MLP on <s>, on the
offline movie-review sentences (10,605; docs/data.md: movie_reviews; the builder reads the
vaderSentiment sdist from $XFM_DOWNLOAD_DIR).

Run:  XFM_DOWNLOAD_DIR=/dir/with/sdist python -m xfm_jax.finetune \
          --config=configs/finetune/sentiment.py:tiny --workdir=DIR [--init=PRETRAIN_WORKDIR]
Regression on the [-4, 4] score:  --config.task.regression=True --config.task.label_field=score
Expect (tiny, 500 steps, ~30 s on 2 CPU cores): 67.5 % accuracy from random init, 49.7 %
chance (docs/finetune.md has the measured table). Base model: SST-2 95.0 in the paper (real RoBERTa
vocabulary and checkpoint needed: data.vocab kind 'bpe').
"""

from configs.finetune import base


def get_config(arg: str = ''):
    tiny = arg == 'tiny'
    config = base.finetune_config(
        'text_classification', arg, source='movie_reviews', text_len=40 if tiny else 64,
        tsv_dir='', text_fields='text', label_field='label', label_names='', regression=False,
        # Tiny models have 512 ids: a word vocabulary of the commonest training words.
        vocab_words=400 if tiny else 0)
    if tiny:  # measured: 5e-4 stays at the class prior within 500 steps, 2e-3 learns
        config.optimizer.learning_rate = 2e-3
    return config
