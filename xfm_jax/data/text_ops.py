"""Text preprocessing in TensorFlow: caption cleaning and tokenise-and-wrap to a fixed length."""

from __future__ import annotations

import seqio
import tensorflow as tf

from xfm_jax.data.vocab import SpecialIds

# Any character that is not a letter, digit, whitespace or apostrophe ("don't" stays one word).
_PUNCTUATION = r"[^\pL\pN\s']"


def clean_caption(text: tf.Tensor, max_words: int = 30) -> tf.Tensor:
    """Lower-case, replace punctuation by spaces, collapse whitespace, keep ``max_words`` words.

    Args:
      text: string [] or [M].
    Returns: string tensor of the same shape.
    """
    text = tf.strings.lower(text, encoding='utf-8')
    text = tf.strings.regex_replace(text, _PUNCTUATION, ' ')
    words = tf.strings.split(text)  # splits on any whitespace, dropping empty pieces
    return tf.strings.reduce_join(words[..., :max_words], axis=-1, separator=' ')


def tokenize_wrapped(vocab: seqio.Vocabulary, specials: SpecialIds, texts: tf.Tensor,
                     length: int) -> tf.Tensor:
    """Encodes ``cls tokens sep``, truncating tokens to ``length - 2``, padded with pad id.

    Args:
      texts: string [] or [M].
    Returns: int32 [length] or [M, length]. An empty text becomes ``cls sep``.
    """
    scalar = texts.shape.rank == 0
    batch = tf.reshape(texts, [-1])
    ids = vocab.encode_tf(batch)
    if not isinstance(ids, tf.RaggedTensor):
        ids = tf.RaggedTensor.from_tensor(ids)
    ids = tf.cast(ids[:, :length - 2], tf.int32)
    rows = tf.shape(batch)[0]
    cls = tf.RaggedTensor.from_tensor(tf.fill([rows, 1], specials.cls))
    sep = tf.RaggedTensor.from_tensor(tf.fill([rows, 1], specials.sep))
    wrapped = tf.concat([cls, ids, sep], axis=1).to_tensor(specials.pad, shape=[None, length])
    return wrapped[0] if scalar else wrapped
