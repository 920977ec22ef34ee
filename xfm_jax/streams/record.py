"""The record of one stream: everything the code says about it, registered once
(``xfm_jax/streams/__init__.py``).

Shape symbols in ``fields``: ``L`` text length, ``N`` patches ``(image_size // patch_size) ** 2``,
``K`` region texts per image, ``F`` video frames, ``H = W`` image size; plain ints stay as they
are. The data side (``record``) is named by a dotted path so this module, and the train step
that reads it, import no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Callable, Mapping

import jax.numpy as jnp

TEXT_FIELDS = ('input_ids', 'attention_mask', 'masked_ids', 'mlm_targets', 'mlm_weights')
_TEXT_DTYPES = ('int32', 'int32', 'int32', 'int32', 'float32')
# Every stream's rows name their source: the index of the row's task in the stream's mixture
# (``streams.sources``), which the train step splits its losses by. Last in each record's fields.
SOURCE_FIELD = {'source': ('int32', ())}


def text_fields(*prefix: str) -> dict[str, tuple[str, tuple]]:
    """The five text fields, ``[.., *prefix, L]`` (region: one text per ``K``)."""
    return {name: (dtype, (*prefix, 'L')) for name, dtype in zip(TEXT_FIELDS, _TEXT_DTYPES)}


def encode_image(model, batch, *, train: bool):
    """The vision encoder on the batch's ``image`` [B, H, W, 3] -> [B, 1+N, Dv]."""
    return model.encode_image(batch['image'], train=train)


def all_tokens(model, image_tokens, batch) -> dict:
    """The default image keys of a pair: every token of its image (one pair row per image)."""
    del model, batch
    return {'image_mask': jnp.ones(image_tokens.shape[:2], jnp.int32)}


@functools.lru_cache(maxsize=None)
def resolve(path: str) -> Callable:
    """The function a record names as ``'module:function'`` (imported on first use)."""
    module, function = path.split(':')
    return getattr(importlib.import_module(module), function)


@dataclasses.dataclass(frozen=True)
class Stream:
    """One stream of the batch contract, from its raw records to what its encodings cost.

    Batch contract (``xfm_jax.streams``; tests, benchmarks and the AOT check build from it):
      fields: ``{field: (dtype, shape after the batch dim in symbols)}``; text-bearing streams
        hold the five ``TEXT_FIELDS``, every stream ``SOURCE_FIELD``.
      sizes: the keys of ``config.batch.<name>`` its shapes read besides ``batch_size``.
    Encodings (``objectives/encode.py``); a stream with text and images is a pair stream:
      encode_images: ``(model, batch, *, train) -> [B, 1+N, Dv]`` image tokens, one row per
        image (or clip); None for a stream without images.
      image_id: the field whose equal values mark the same image (pair streams).
      pair_fields: per-text fields ``[B, K, ...]`` handed to objectives as ``[B*K, ...]``.
      pair_keys: ``(model, image_tokens, batch) -> {'image_mask': [B', 1+N], ...}``: the image
        keys of each pair row, plus, where a pair has its own first token, ``region_token``
        [B', Dv].
      pair_tokens: image tokens of a pair row's own (the region token) whose fusion keys and
        values are projected per row (FLOPs).
    Data (``data/tasks.py``; TensorFlow only there):
      record: ``'module:function'``, the tf.data map from a source's canonical schema
        (``data/builders/schema.py``) to the stream's raw record:
        ``fn(ex, *, tokenize, clean, use_qa) -> record``.
      record_features: ``{feature: (dtype, rank)}`` of that raw record.
      reads: the schema features it reads (only these are parsed).
      schemas: the source schemas that feed it; ``source_flag``: a ``Source`` attribute that
        must be true too (region: ``'regions'``).
      qa_reads: the schema features of its question-answer form, the tasks
        ``{source}_vqa_{name}`` of sources with ``qa``; () when it has none.
      augment, finalize: ``'module:function'``, its raw record's two per-example stages
        (``data/augment.py``: the tf.data map, then numpy); passthrough: the fields the tf.data
        stage already gives in final form (taken from the tf.data batch as they are).
    """
    name: str
    fields: Mapping[str, tuple[str, tuple]]
    record: str
    record_features: Mapping[str, tuple[str, int]]
    reads: tuple[str, ...]
    schemas: tuple[str, ...]
    sizes: tuple[str, ...] = ()
    encode_images: Callable | None = None
    image_id: str | None = None
    pair_fields: tuple[str, ...] = ()
    pair_keys: Callable = all_tokens
    pair_tokens: int = 0
    source_flag: str | None = None
    qa_reads: tuple[str, ...] = ()
    augment: str = ''
    finalize: str = ''
    passthrough: tuple[str, ...] = ()

    @property
    def has_text(self) -> bool:
        return 'input_ids' in self.fields

    @property
    def kind(self) -> str:
        """'text', 'image' or 'pairs' (text and images): which objectives can apply."""
        if self.encode_images is None:
            return 'text'
        return 'pairs' if self.has_text else 'image'
