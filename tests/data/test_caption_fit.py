"""A user source's captions against the vocabulary and text length: the figures
(tasks.caption_fit) by hand, and the one WARNING at pipeline construction when most tokens are
single characters or many captions are cut, checked against transformers' BertTokenizer."""

import logging

import pytest
from PIL import Image

from tests.data.test_vocab import _minilm_vocab
from xfm_jax.data import tasks

# Real English captions (lower case, no punctuation: cleaning leaves them as they are).
CAPTIONS = [
    'a man riding a bicycle down a busy city street',
    'two dogs playing with a frisbee in the park',
    'a plate of pasta with tomatoes and fresh basil',
    'children building a sandcastle on a sunny beach',
    'an old wooden boat tied to a pier at sunset',
    'a woman reading a newspaper on a crowded train',
    'a kitchen with white cabinets and a large window',
    'a herd of sheep grazing on a green hillside',
    'a cat sleeping on a pile of folded laundry',
    'people waiting for a bus in the pouring rain',
]


def test_caption_fit_figures_by_hand(tmp_path):
    tokens = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'a', 'red', 'car', 'd', '##s',
              '##o', '##g']
    (tmp_path / 'vocab.txt').write_text('\n'.join(tokens) + '\n')
    vocab = tasks.vocab_lib.WordPieceVocabulary(str(tmp_path / 'vocab.txt'))
    # a|red|car, car|##s, d|##o|##g: 8 tokens, 5 of one character (a, ##s, d, ##o, ##g).
    texts = ['a red car', 'cars', 'dog']
    assert tasks.caption_fit(vocab, texts, text_len=5) == {
        'single': 5 / 8, 'truncated': 0.0, 'median': 3.0}
    # text_len 4 leaves 2 ids between [CLS] and [SEP]: the two 3-token texts are cut.
    assert tasks.caption_fit(vocab, texts, text_len=4)['truncated'] == pytest.approx(2 / 3)


@pytest.fixture
def user_config(tmp_path, data_dir):
    """A tiny data config whose image_text stream reads a jsonl user source of CAPTIONS."""
    import json

    from configs import data as data_configs, x2vlm_base
    Image.new('RGB', (40, 30), (200, 30, 30)).save(tmp_path / 'red.jpg')
    pairs = tmp_path / 'pairs.jsonl'
    pairs.write_text('\n'.join(json.dumps({'image': 'red.jpg', 'caption': c}) for c in CAPTIONS))
    model = x2vlm_base.get_config('tiny').model
    model.text.mask_id = min(model.text.mask_id, model.text.vocab_size - 1)
    config = data_configs.data_config('synthetic_tiny', model)
    config.tfds_data_dir = str(tmp_path / 'tfds')
    config.vocab.path = f'{data_dir}/vocab_caption_fit.txt'
    config.user_sources = {'mine': {'format': 'jsonl', 'path': str(pairs)}}
    config.streams = {'image_text': dict(config.streams.image_text.to_dict(), batch_size=2,
                                         mixture=[('mine_image_text', 1.0)])}
    return config


def _expected(vocab_file: str, text_len: int) -> tuple[float, float]:
    """(single-character token share, share cut at text_len), by transformers' tokenizer."""
    transformers = pytest.importorskip('transformers')
    tokenizer = transformers.BertTokenizer(vocab_file, do_lower_case=True)
    tokens = [tokenizer.tokenize(c) for c in CAPTIONS]
    flat = [t.removeprefix('##') for caption in tokens for t in caption]
    single = sum(len(t) == 1 for t in flat) / len(flat)
    return single, sum(len(t) > text_len - 2 for t in tokens) / len(tokens)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and 'user source' in r.getMessage()]


def test_closed_vocabulary_warns_at_pipeline_construction(user_config, caplog):
    from xfm_jax.data import pipeline
    text_len = user_config.streams.image_text.text_len
    with caplog.at_level('WARNING'):
        pipeline.make_streams(user_config, seed=0).close()
    single, truncated = _expected(user_config.vocab.path, text_len)
    assert single > 0.5  # the closed synthetic vocabulary spells these words letter by letter
    [message] = _warnings(caplog)
    assert f"'mine' (task mine_image_text): in its first {len(CAPTIONS)} captions" in message
    assert f'{100 * single:.1f} % of the tokens are single characters' in message
    assert f'{100 * truncated:.1f} % of the captions are cut at ' in message
    assert f'data.streams.image_text.text_len={text_len}' in message
    assert 'open vocabulary' in message and 'train_sentencepiece' in message


def test_open_vocabulary_is_quiet_and_short_text_len_warns(user_config, caplog):
    user_config.vocab = {'kind': 'wordpiece', 'path': _minilm_vocab()}
    user_config.streams.image_text.text_len = 16
    assert _expected(_minilm_vocab(), 16)[1] == 0
    with caplog.at_level('WARNING'):
        tasks.warn_on_caption_fit(user_config)
    assert _warnings(caplog) == []  # real words, none cut

    caplog.clear()
    user_config.streams.image_text.text_len = 11
    single, truncated = _expected(_minilm_vocab(), 11)
    assert single < 0.5 and 0.1 < truncated < 1  # 'a' is the only one-character word
    with caplog.at_level('WARNING'):
        tasks.warn_on_caption_fit(user_config)
    [message] = _warnings(caplog)
    assert f'{100 * truncated:.1f} % of the captions are cut at ' in message
    assert 'use a longer data.streams.image_text.text_len.' in message
    assert 'open vocabulary' not in message
