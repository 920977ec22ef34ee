"""Analytic model FLOPs per train step, peak throughput per device kind, and MFU.

FLOPs count matrix multiplies only (2 * m * n * k), over the static (padded) shapes the step
computes. Training = 3 x forward (backward = 2 x forward); rematerialised recomputation is NOT
counted (MFU, not hardware utilisation). A stream's forward FLOPs are its shared encodings
(:func:`encodings_forward`: what its objectives read, computed once) plus each objective's own
passes (the ``flops`` of its record in ``xfm_jax.objectives``), over the stream's
:class:`Rows`. Per stream with the reference objectives (docs/design.md §7):

* text:        language encoder on the masked text + its MLM head on the masked positions (mlm).
* image:       vision encoder twice: unmasked target + masked pass (mim).
* image_text:  vision (+1 masked pass if mim); language encoder on the caption (itc) and on the
               masked caption (imlm); fusion on B positives + 2B negatives (itm) and B masked
               captions (imlm) with the fusion MLM head.
* region:      vision on the images; per text (B*K): language encoder twice (itc, imlm), fusion
               3x (itm) + 1x (imlm) over region tokens + 1x (box) over the full image.
* video:       vision on B*F frames; then as image_text without mim.

The fusion's cross-attention keys and values of an image's tokens are projected once per image
in each fusion pass (itm, imlm, box), whatever number of rows read them; a region text adds
those of its own region token.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

# Dense bf16 peak FLOP/s per chip, from vendor data sheets.
PEAK_FLOPS = {
    'H100': 989e12,  # SXM, dense (no sparsity)
    'H200': 989e12,
    'A100': 312e12,
    'TPU v4': 275e12,
    'TPU v5 lite': 197e12,  # v5e
    'TPU v5': 459e12,  # v5p
    'TPU v6 lite': 918e12,  # Trillium
}


def peak_flops_for(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s of a jax ``device.device_kind``, or None when unknown (e.g. CPU)."""
    for name, peak in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if device_kind.startswith(name) or name in device_kind:
            return peak
    return None


def measure_cpu_matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large fp32 matmul under jit on the default (CPU) device: the CPU 'peak'."""
    import jax
    import jax.numpy as jnp
    x = jnp.ones((size, size), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


@dataclasses.dataclass(frozen=True)
class Dims:
    """What the FLOP formulas need from a model config."""
    image_size: int
    patch_size: int
    vision_width: int
    vision_depth: int
    vision_mlp: int
    text_width: int
    text_depth: int
    text_mlp: int
    fusion_depth: int
    vocab_size: int
    embed_dim: int

    @classmethod
    def from_config(cls, model) -> 'Dims':
        return cls(image_size=model.vision.image_size, patch_size=model.vision.patch_size,
                   vision_width=model.vision.width, vision_depth=model.vision.depth,
                   vision_mlp=model.vision.mlp_dim, text_width=model.text.width,
                   text_depth=model.text.depth, text_mlp=model.text.mlp_dim,
                   fusion_depth=model.fusion.depth, vocab_size=model.text.vocab_size,
                   embed_dim=model.embed_dim)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def _attention_layer(tokens, width, mlp, context=None):
    """Forward FLOPs of one transformer layer over `tokens` queries (per example); with
    `context` keys, the cross-attention without its key/value projections
    (:func:`cross_attention_kv_forward`)."""
    flops = 2 * tokens * width * width * 4  # q, k, v, out
    flops += 2 * 2 * tokens * tokens * width  # scores + weighted sum
    flops += 2 * 2 * tokens * width * mlp  # FFN
    if context is not None:
        flops += 2 * tokens * width * width * 2  # cross q, out
        flops += 2 * 2 * tokens * context * width
    return flops


def vision_forward(d: Dims) -> int:
    tokens = d.num_patches + 1
    patch = 2 * d.num_patches * d.patch_size ** 2 * 3 * d.vision_width
    return patch + d.vision_depth * _attention_layer(tokens, d.vision_width, d.vision_mlp)


def text_forward(d: Dims, length: int) -> int:
    return d.text_depth * _attention_layer(length, d.text_width, d.text_mlp)


def fusion_forward(d: Dims, length: int) -> int:
    """One text row through the fusion layers, attending to 1+N image keys whose projections
    are counted per image (:func:`cross_attention_kv_forward`)."""
    return d.fusion_depth * _attention_layer(length, d.text_width, d.text_mlp,
                                             context=d.num_patches + 1)


def cross_attention_kv_forward(d: Dims, tokens: int) -> int:
    """Cross-attention keys and values of `tokens` image tokens in every fusion layer."""
    return d.fusion_depth * 2 * 2 * tokens * d.vision_width * d.text_width


def mlm_head_forward(d: Dims, length: int) -> int:
    return 2 * length * d.text_width * (d.text_width + d.vocab_size)


def projection_forward(d: Dims) -> int:
    return 2 * d.embed_dim * (d.vision_width + d.text_width)


def mlm_positions(settings, text_len: int) -> int:
    """Positions an MLM head runs on: ``settings.max_predictions`` capped at ``text_len``
    (0: all)."""
    cap = settings.get('max_predictions', 0)
    return min(cap, text_len) if cap else text_len


@dataclasses.dataclass(frozen=True)
class Rows:
    """How many rows each part of a stream's forward pass runs on.

    images: rows the vision encoder encodes (video: every frame); image_rows: image token sets
    the fusion reads (one per image or clip); pairs: text rows (region: B*K); text_len;
    pair_tokens: image tokens of a pair row's own (``Stream.pair_tokens``).
    """
    images: int
    image_rows: int
    pairs: int
    text_len: int
    pair_tokens: int = 0

    @classmethod
    def of(cls, stream, *, batch: int, text_len: int = 1, region_texts: int = 1,
           frames: int = 1) -> 'Rows':
        """The rows of the stream record ``stream`` (``xfm_jax.streams``) from the symbols of
        its fields: K texts per image, F frames per clip."""
        symbols = {s for _, suffix in stream.fields.values() for s in suffix}
        return cls(images=batch * (frames if 'F' in symbols else 1), image_rows=batch,
                   pairs=batch * (region_texts if 'K' in symbols else 1), text_len=text_len,
                   pair_tokens=stream.pair_tokens)

    def fusion(self, d: Dims, passes: int = 1, own_tokens: bool = True) -> int:
        """``passes`` fusion passes over every pair row, the images' keys and values projected
        once (``own_tokens``: with each row's own tokens, e.g. the region token)."""
        own = cross_attention_kv_forward(d, self.pair_tokens) if own_tokens else 0
        return (passes * self.pairs * (fusion_forward(d, self.text_len) + own)
                + self.image_rows * cross_attention_kv_forward(d, d.num_patches + 1))


def encodings_forward(d: Dims, rows: Rows, needs) -> int:
    """Forward FLOPs of the shared encodings ``needs`` (``objectives/encode.py``), computed once
    per stream. The embeddings come with the similarity matrix their readers (ITC, ITM's
    negative draw) compute, counted once."""
    needs = set(needs)
    total = 0
    if needs & {'image_tokens', 'image_mask', 'image_embedding'}:
        total += rows.images * vision_forward(d)
    if needs & {'text_hidden', 'text_embedding'}:
        total += rows.pairs * text_forward(d, rows.text_len)
    if needs & {'image_embedding', 'text_embedding'}:
        total += rows.pairs * projection_forward(d) + 2 * rows.pairs * rows.pairs * d.embed_dim
    return total


def stream_forward_flops(d: Dims, stream: str, objectives, settings, **sizes) -> int:
    """Forward FLOPs of one stream's ``objectives`` for a global batch; ``settings``:
    ``config.objectives``; ``sizes``: batch, text_len, region_texts, frames."""
    from xfm_jax import objectives as objectives_lib, streams  # they build on this module
    rows = Rows.of(streams.get(stream), **sizes)
    records = [objectives_lib.OBJECTIVES[name] for name in objectives]
    total = encodings_forward(d, rows, frozenset().union(*(r.needs for r in records)))
    return total + sum(r.flops(d, rows, settings[r.name]) for r in records)


def train_step_flops(config, stream_sizes: dict) -> dict:
    """{stream: training FLOPs per step} and 'total'; ``stream_sizes[s]`` holds batch, text_len,
    region_texts, frames (``streams.batch_shape``). Reference schedule counts every update's
    streams once."""
    d = Dims.from_config(config.model)
    out = {}
    for stream, sizes in stream_sizes.items():
        names = [k for k, v in config.streams[stream].items() if float(v)]
        out[stream] = 3 * stream_forward_flops(d, stream, names, config.objectives, **sizes)
    out['total'] = int(np.sum(list(out.values())))
    return out
