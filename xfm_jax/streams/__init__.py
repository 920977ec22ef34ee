"""The batch contract between the data pipeline and the train step.

A training batch is a dict ``{stream_name: {field: array}}`` holding any subset of the streams
below. Every field has a leading global batch dimension ``B`` (per stream). Shapes use
``L`` = text length, ``N`` = number of patches ``(image_size // patch_size) ** 2``,
``K`` = region texts per image, ``F`` = video frames, ``H = W`` = image size.

Text fields shared by the text-bearing streams:
  input_ids      int32 [.., L]   token ids, padded with the vocabulary's pad id
  attention_mask int32 [.., L]   1 for real tokens
  masked_ids     int32 [.., L]   input_ids after MLM masking (80/10/10)
  mlm_targets    int32 [.., L]   original ids (only read where mlm_weights > 0)
  mlm_weights    float32 [.., L] 1.0 at masked positions, else 0.0
"""

from __future__ import annotations

import numpy as np

TEXT_FIELDS = ('input_ids', 'attention_mask', 'masked_ids', 'mlm_targets', 'mlm_weights')

# field -> (dtype, shape suffix after the batch dim, expressed with symbols).
STREAMS = {
    'text': {f: None for f in TEXT_FIELDS},
    'image': {
        'image': ('float32', ('H', 'W', 3)),  # CLIP-normalised pixels
        'mim_mask': ('bool', ('N',)),  # exactly `mim.num_masked` True per row
    },
    'image_text': {
        'image': ('float32', ('H', 'W', 3)),
        'image_id': ('int32', ()),  # equal ids mark the same image (soft ITC targets)
        'mim_mask': ('bool', ('N',)),
        **{f: None for f in TEXT_FIELDS},
    },
    'region': {
        'image': ('float32', ('H', 'W', 3)),
        'image_id': ('int32', ()),
        # K texts per image, each about one box (or the whole image).
        **{f: 'region_text' for f in TEXT_FIELDS},
        'patch_mask': ('bool', ('K', 'N')),  # patches covered by the box
        'box': ('float32', ('K', 4)),  # normalised (cx, cy, w, h)
        'box_valid': ('float32', ('K',)),  # 0 for whole-image captions and padding texts
        'text_valid': ('float32', ('K',)),  # 0 for padding texts
    },
    'video': {
        'frames': ('float32', ('F', 'H', 'W', 3)),
        'video_id': ('int32', ()),
        **{f: None for f in TEXT_FIELDS},
    },
}

_TEXT_DTYPES = {'input_ids': 'int32', 'attention_mask': 'int32', 'masked_ids': 'int32',
                'mlm_targets': 'int32', 'mlm_weights': 'float32'}


def field_specs(stream: str, *, batch: int, text_len: int, image_size: int, patch_size: int,
                region_texts: int = 1, frames: int = 1) -> dict[str, tuple[tuple[int, ...], str]]:
    """Returns ``{field: (shape, dtype)}`` for one stream with concrete sizes."""
    if stream not in STREAMS:
        raise ValueError(f'Unknown stream {stream!r}; expected one of {sorted(STREAMS)}.')
    sizes = {'H': image_size, 'W': image_size, 'N': (image_size // patch_size) ** 2,
             'K': region_texts, 'F': frames, 'L': text_len}
    specs = {}
    for name, spec in STREAMS[stream].items():
        if spec is None or spec == 'region_text':
            prefix = (region_texts,) if spec == 'region_text' else ()
            specs[name] = ((batch, *prefix, text_len), _TEXT_DTYPES[name])
        else:
            dtype, suffix = spec
            specs[name] = ((batch, *(sizes.get(s, s) for s in suffix)), dtype)
    return specs


def synthetic_batch(stream: str, rng: np.random.Generator, *, vocab_size: int, pad_id: int,
                    mask_id: int, num_masked_patches: int, **sizes) -> dict[str, np.ndarray]:
    """A random batch that satisfies the contract (benchmarks and tests; no TF needed)."""
    specs = field_specs(stream, **sizes)
    out = {}
    for name, (shape, dtype) in specs.items():
        if name in ('image', 'frames'):
            out[name] = rng.standard_normal(shape).astype(dtype)
        elif name in ('input_ids', 'mlm_targets'):
            out[name] = rng.integers(pad_id + 3, vocab_size, shape).astype(dtype)
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
