"""seqio vocabularies that reproduce the released tokenisers from the user's files.

- ``WordPieceVocabulary(vocab.txt)``: BERT uncased WordPiece (X²-VLM), via tensorflow_text.
- ``ByteBPEVocabulary(vocab.json, merges.txt)``: RoBERTa / GPT-2 byte-level BPE (X-FM), in pure
  Python (wrapped with ``tf.numpy_function`` for tf.data).
- ``seqio.SentencePieceVocabulary``: models from ``python -m xfm_jax.data.train_sentencepiece``.
- ``synthetic_vocab_file``: a closed word-level WordPiece vocab for the synthetic data, laid out
  so that its special ids are exactly the model config's (tiny models keep their tiny vocab).

Every vocabulary exposes ``special_ids(vocab) -> SpecialIds`` (pad, cls, sep, mask); texts are
wrapped as ``cls tokens sep`` by the task preprocessors, never by ``encode``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Sequence

import numpy as np
import seqio
import tensorflow as tf

from xfm_jax import paths


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    pad: int
    cls: int
    sep: int
    mask: int


class WordPieceVocabulary(seqio.Vocabulary):
    """BERT WordPiece from a ``vocab.txt`` (one token per line, id = line number).

    Uses tensorflow_text.BertTokenizer (basic tokenizer: lower-case, strip accents, split
    punctuation and CJK characters; then greedy longest-match WordPiece), which reproduces
    transformers' BertTokenizer(do_lower_case=True).
    """

    def __init__(self, vocab_file: str, lower_case: bool = True):
        path = paths.resolve(vocab_file)  # local or gs://
        if not path.exists():
            raise FileNotFoundError(f'WordPiece vocab file {vocab_file!r} does not exist.')
        self._tokens = path.read_text(encoding='utf-8').split('\n')
        if self._tokens and self._tokens[-1] == '':  # the final newline ends a line
            self._tokens.pop()
        self._ids = {t: i for i, t in enumerate(self._tokens)}
        for required in ('[PAD]', '[CLS]', '[SEP]', '[MASK]', '[UNK]'):
            if required not in self._ids:
                raise ValueError(f'{vocab_file!r} lacks the special token {required}.')
        self.vocab_file = vocab_file
        self._lower_case = lower_case
        super().__init__()

    @functools.cached_property
    def _tokenizer(self):
        import tensorflow_text as tf_text
        with tf.init_scope():  # the lookup table must live outside any tf.data function graph
            # A table built from the tokens read above: the file is read once, wherever it is.
            table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant(self._tokens), tf.range(len(self._tokens), dtype=tf.int64)),
                default_value=-1)
            return tf_text.BertTokenizer(table, token_out_type=tf.int32,
                                         lower_case=self._lower_case, unknown_token='[UNK]')

    @property
    def special_ids(self) -> SpecialIds:
        return SpecialIds(pad=self._ids['[PAD]'], cls=self._ids['[CLS]'], sep=self._ids['[SEP]'],
                          mask=self._ids['[MASK]'])

    @property
    def pad_id(self) -> int:
        return self._ids['[PAD]']

    @property
    def eos_id(self) -> int:
        return self._ids['[SEP]']

    @property
    def unk_id(self) -> int:
        return self._ids['[UNK]']

    @property
    def _base_vocab_size(self) -> int:
        return len(self._tokens)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        """string [] -> int32 [T]; string [B] -> ragged int32 [B, (T)]."""
        scalar = s.shape.rank == 0
        pieces = self._tokenizer.tokenize(tf.reshape(s, [-1]) if scalar else s)
        ids = pieces.merge_dims(-2, -1)
        return ids[0] if scalar else ids

    def _encode(self, s: str) -> Sequence[int]:
        return self._encode_tf(tf.constant(s)).numpy().tolist()

    def _decode(self, ids) -> str:
        words = []
        for i in ids:
            token = self._tokens[int(i)]
            if token.startswith('##') and words:
                words[-1] += token[2:]
            else:
                words.append(token)
        return ' '.join(words)

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        return tf.numpy_function(lambda x: np.bytes_(self._decode(x).encode()), [ids], tf.string)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (whitespace and control bytes are
    shifted above 255 so that BPE never sees them raw)."""
    printable = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1))
                 + list(range(ord('®'), ord('ÿ') + 1)))
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


class ByteBPEVocabulary(seqio.Vocabulary):
    """RoBERTa / GPT-2 byte-level BPE from ``vocab.json`` + ``merges.txt``.

    Matches transformers' RobertaTokenizer(add_prefix_space=False) on plain text: GPT-2's
    pre-tokenising regex, bytes mapped to printable characters, then merges by rank.
    """

    _PRETOKENIZE = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
                    r"""|\s+(?!\S)|\s+""")

    def __init__(self, vocab_json: str, merges_txt: str):
        import regex
        for path in (vocab_json, merges_txt):
            if not paths.resolve(path).exists():
                raise FileNotFoundError(f'BPE file {path!r} does not exist.')
        self._ids: dict[str, int] = json.loads(paths.resolve(vocab_json).read_text('utf-8'))
        pairs = [tuple(line.split())
                 for line in paths.resolve(merges_txt).read_text('utf-8').splitlines()
                 if line.strip() and not line.startswith('#version')]
        self._ranks = {pair: rank for rank, pair in enumerate(pairs)}
        self._tokens = {i: t for t, i in self._ids.items()}
        for required in ('<s>', '</s>', '<pad>', '<mask>', '<unk>'):
            if required not in self._ids:
                raise ValueError(f'{vocab_json!r} lacks the special token {required}.')
        self._byte_chars = _bytes_to_unicode()
        self._char_bytes = {c: b for b, c in self._byte_chars.items()}
        # UTF-8 bytes read as latin-1 are code points 0..255: str.translate maps them to the
        # printable characters in C.
        self._byte_table = str.maketrans({chr(b): c for b, c in self._byte_chars.items()})
        self._pattern = regex.compile(self._PRETOKENIZE)
        self._cache: dict[str, list[int]] = {}  # pre-token -> ids
        super().__init__()

    @property
    def special_ids(self) -> SpecialIds:
        return SpecialIds(pad=self._ids['<pad>'], cls=self._ids['<s>'], sep=self._ids['</s>'],
                          mask=self._ids['<mask>'])

    @property
    def pad_id(self) -> int:
        return self._ids['<pad>']

    @property
    def eos_id(self) -> int:
        return self._ids['</s>']

    @property
    def unk_id(self) -> int:
        return self._ids['<unk>']

    @property
    def _base_vocab_size(self) -> int:
        return max(self._ids.values()) + 1

    _CACHE_SIZE = 200_000  # pre-tokens; the cache restarts when full (memory stays bounded)

    def _bpe(self, piece: str) -> list[int]:
        """Ids of one pre-token: its bytes mapped to printable characters, merged greedily by
        merge rank. Cached: captions repeat words, and a cache hit skips all of this."""
        ids = self._cache.get(piece)
        if ids is not None:
            return ids
        parts = list(piece.encode('utf-8').decode('latin-1').translate(self._byte_table))
        while len(parts) > 1:
            ranked = [(self._ranks.get(pair, np.inf), i)
                      for i, pair in enumerate(zip(parts, parts[1:]))]
            best_rank, best = min(ranked)
            if best_rank == np.inf:
                break
            first, second = parts[best], parts[best + 1]
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the best pair, left to right
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self._ids.get(p, self.unk_id) for p in parts]
        if len(self._cache) >= self._CACHE_SIZE:
            self._cache.clear()
        self._cache[piece] = ids
        return ids

    def _encode(self, s: str) -> list[int]:
        bpe = self._bpe
        return [i for piece in self._pattern.findall(s) for i in bpe(piece)]

    def _decode(self, ids) -> str:
        text = ''.join(self._tokens.get(int(i), '') for i in ids)
        return bytes(self._char_bytes[c] for c in text if c in self._char_bytes).decode(
            'utf-8', errors='replace')

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        """string [] -> int32 [T]; string [B] -> ragged int32 [B, (T)]."""
        def encode_batch(texts):
            encoded = [self._encode(t.decode('utf-8')) for t in texts.reshape(-1)]
            flat = np.array([i for ids in encoded for i in ids], np.int32)
            return flat, np.array([len(ids) for ids in encoded], np.int64)

        flat, lengths = tf.numpy_function(encode_batch, [tf.reshape(s, [-1])],
                                          [tf.int32, tf.int64], stateful=False)
        flat.set_shape([None])
        if s.shape.rank == 0:
            return flat
        return tf.RaggedTensor.from_row_lengths(flat, lengths)

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        return tf.numpy_function(lambda x: np.bytes_(self._decode(x).encode()), [ids], tf.string)


def special_ids(vocab: seqio.Vocabulary) -> SpecialIds:
    """Pad / start / end / mask ids of any vocabulary this project builds."""
    if isinstance(vocab, (WordPieceVocabulary, ByteBPEVocabulary)):
        return vocab.special_ids
    if isinstance(vocab, seqio.SentencePieceVocabulary):
        model = vocab.tokenizer
        mask = model.piece_to_id('<mask>')
        if mask == model.unk_id():
            raise ValueError(f'SentencePiece model {vocab.sentencepiece_model_file!r} has no '
                             "'<mask>' piece; train it with python -m "
                             'xfm_jax.data.train_sentencepiece.')
        return SpecialIds(pad=model.pad_id(), cls=model.bos_id(), sep=model.eos_id(), mask=mask)
    raise TypeError(f'No special ids known for vocabulary type {type(vocab).__name__}.')


def synthetic_vocab_file(words: Sequence[str], path: str, *, vocab_size: int, pad_id: int,
                         cls_id: int, sep_id: int, mask_id: int) -> str:
    """Writes a closed word-level WordPiece vocab whose special ids are the model's.

    Slots ``pad_id`` / ``cls_id`` / ``sep_id`` / ``mask_id`` hold [PAD] / [CLS] / [SEP] / [MASK];
    [UNK], then the sorted ``words``, then single characters and '##' continuations (so unseen
    words still tokenise) fill the free slots in order; leftover slots become [unusedN].
    """
    fixed = {pad_id: '[PAD]', cls_id: '[CLS]', sep_id: '[SEP]', mask_id: '[MASK]'}
    for name, value in (('pad_id', pad_id), ('cls_id', cls_id), ('sep_id', sep_id),
                        ('mask_id', mask_id)):
        if not 0 <= value < vocab_size:
            raise ValueError(f'model.text.{name}={value} lies outside model.text.vocab_size='
                             f'{vocab_size}; special ids must be < vocab_size.')
    if len(fixed) != 4:
        raise ValueError(f'model.text special ids must differ, got {fixed}.')
    chars = 'abcdefghijklmnopqrstuvwxyz0123456789'
    entries = ['[UNK]'] + sorted(set(words) - set(chars)) + list(chars) + ['##' + c for c in chars]
    free = [i for i in range(vocab_size) if i not in fixed]
    if len(entries) > len(free):
        raise ValueError(f'model.text.vocab_size={vocab_size} is too small for the synthetic '
                         f'vocabulary ({len(entries)} entries + 4 special tokens).')
    tokens = dict(fixed)
    for slot, entry in zip(free, entries):
        tokens[slot] = entry
    lines = [tokens.get(i, f'[unused{i}]') for i in range(vocab_size)]
    target = paths.resolve(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f'{target.name}.tmp{os.getpid()}'
    tmp.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    tmp.replace(target)  # atomic on local disks: parallel builders never read half a file
    return path
