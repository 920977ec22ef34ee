"""The batch contract between the data pipeline and the train step: the stream registry.

A training batch is a dict ``{stream_name: {field: array}}`` holding any subset of the streams
below. Every field has a leading global batch dimension ``B`` (per stream). Shapes use
``L`` = text length, ``N`` = number of patches ``(image_size // patch_size) ** 2``,
``K`` = region texts per image, ``F`` = video frames, ``H = W`` = image size.

Every stream:
  source         int32 []        the row's task: its index in ``sources(config.data, stream)``

Text fields shared by the text-bearing streams:
  input_ids      int32 [.., L]   token ids, padded with the vocabulary's pad id
  attention_mask int32 [.., L]   1 for real tokens
  masked_ids     int32 [.., L]   input_ids after MLM masking (80/10/10)
  mlm_targets    int32 [.., L]   original ids (only read where mlm_weights > 0)
  mlm_weights    float32 [.., L] 1.0 at masked positions, else 0.0

Each stream is one record (``record.Stream``) in a file of its own here; ``STREAMS`` registers
them. Its order is the streams' order everywhere (update groups, per-stream seeds), so a new
stream goes at the end: one file plus one line below.
"""

from __future__ import annotations

import numpy as np

from xfm_jax.streams import image, image_text, region, text, video
from xfm_jax.streams.record import SOURCE_FIELD, TEXT_FIELDS, Stream, resolve

STREAMS: dict[str, Stream] = {s.name: s for s in (
    text.STREAM, image.STREAM, image_text.STREAM, region.STREAM, video.STREAM)}


def text_length(config, stream: str = 'image_text') -> int:
    """Caption length of the run's ``stream`` (the length the model was trained on); for a run
    without that stream, of its first stream with captions (e.g. a region-only run)."""
    data_streams = config.data.streams
    if stream not in data_streams:
        captioned = [s for s in data_streams if s != 'text' and 'text_len' in data_streams[s]]
        if not captioned:
            raise ValueError(f'config.data.streams has no {stream!r} stream nor any other with '
                             f'captions (it has {list(data_streams)}): no caption length to '
                             'tokenise with.')
        stream = captioned[0]
    return int(data_streams[stream].text_len)


def get(name: str) -> Stream:
    """The record of stream ``name``; a ValueError names the known ones."""
    if name not in STREAMS:
        raise ValueError(f'Unknown stream {name!r}; expected one of {list(STREAMS)}.')
    return STREAMS[name]


def batch_shape(config, name: str) -> dict[str, int]:
    """The shape of stream ``name`` in a run config: ``batch`` and the ``config.batch.<name>``
    keys its fields read (text_len, region_texts, frames)."""
    section = config.batch[name]
    return {'batch': section.batch_size, **{key: section[key] for key in get(name).sizes}}


def sources(data_config, name: str) -> tuple[str, ...]:
    """The tasks of ``data_config.streams.<name>.mixture``, in the order written there (each
    once): a batch row's ``source`` field is its task's index in this tuple."""
    return tuple(dict.fromkeys(task for task, _ in data_config.streams[name].mixture))


def source_name(task: str, name: str) -> str:
    """A mixture task's short name in metric tags: the task name without the ``_<stream>``
    every task of stream ``name`` ends with (``{source}_{stream}``, ``{source}_vqa_{stream}``),
    e.g. 'fortunes' for 'fortunes_text', 'xfm_synthetic_scenes_vqa' for
    'xfm_synthetic_scenes_vqa_image_text'."""
    return task.removesuffix(f'_{name}')


def field_specs(stream: str, *, batch: int, text_len: int = 1, image_size: int,
                patch_size: int, region_texts: int = 1,
                frames: int = 1) -> dict[str, tuple[tuple[int, ...], str]]:
    """Returns ``{field: (shape, dtype)}`` for one stream with concrete sizes."""
    symbols = {'H': image_size, 'W': image_size, 'N': (image_size // patch_size) ** 2,
               'K': region_texts, 'F': frames, 'L': text_len}
    return {name: ((batch, *(symbols.get(s, s) for s in suffix)), dtype)
            for name, (dtype, suffix) in get(stream).fields.items()}


def synthetic_batch(stream: str, rng: np.random.Generator, *, vocab_size: int, pad_id: int,
                    mask_id: int, num_masked_patches: int, **sizes) -> dict[str, np.ndarray]:
    """A random batch that satisfies the contract (benchmarks and tests; no TF needed)."""
    specs = field_specs(stream, **sizes)
    out = {}
    for name, (shape, dtype) in specs.items():
        if name in ('image', 'frames'):  # uint8 pixels
            out[name] = rng.integers(0, 256, shape).astype(dtype)
        elif name in ('input_ids', 'mlm_targets'):
            out[name] = rng.integers(pad_id + 3, vocab_size, shape).astype(dtype)
        elif name == 'source':
            out[name] = np.zeros(shape, dtype)  # every row from the stream's first source
        elif name.endswith('_id'):
            out[name] = np.arange(shape[0], dtype=dtype)
        elif name in ('mim_mask', 'patch_mask'):
            num_patches = shape[-1]
            count = num_masked_patches if name == 'mim_mask' else max(1, num_patches // 4)
            scores = rng.random(shape)
            kth = np.sort(scores, axis=-1)[..., count - 1:count]
            out[name] = scores <= kth
        elif name == 'box':
            centre = rng.uniform(0.3, 0.7, shape[:-1] + (2,))
            size = rng.uniform(0.1, 0.5, shape[:-1] + (2,))
            out[name] = np.concatenate([centre, size], -1).astype(dtype)
        else:
            out[name] = np.ones(shape, dtype)
    text_len = out['input_ids'].shape[-1] if 'input_ids' in out else 0
    if text_len:
        # Realistic padding: each row keeps a random length >= 2 tokens.
        lengths = rng.integers(2, text_len + 1, out['input_ids'].shape[:-1])
        valid = np.arange(text_len) < lengths[..., None]
        out['attention_mask'] = valid.astype(np.int32)
        out['input_ids'] = np.where(valid, out['input_ids'], pad_id).astype(np.int32)
        out['mlm_targets'] = out['input_ids'].copy()
        weights = (rng.random(valid.shape) < 0.15) & valid
        weights[..., 0] = False
        out['mlm_weights'] = weights.astype(np.float32)
        out['masked_ids'] = np.where(weights, mask_id, out['input_ids']).astype(np.int32)
    return out


__all__ = ['SOURCE_FIELD', 'STREAMS', 'Stream', 'TEXT_FIELDS', 'batch_shape', 'field_specs',
           'get', 'source_name', 'sources', 'synthetic_batch']
