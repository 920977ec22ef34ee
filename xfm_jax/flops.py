"""Analytic model FLOPs per train step, peak throughput per device kind, and MFU.

FLOPs count matrix multiplies only (2 * m * n * k), over the static (padded) shapes the step
computes. Training = 3 x forward (backward = 2 x forward); rematerialised recomputation is NOT
counted (MFU, not hardware utilisation). Per stream, the forward passes follow docs/design.md §7:

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


def stream_forward_flops(d: Dims, stream: str, objectives, *, batch: int, text_len: int,
                         region_texts: int = 1, frames: int = 1, mlm_predictions: int = 0,
                         imlm_predictions: int = 0) -> int:
    """Forward FLOPs of one stream's objectives for a global batch; ``*_predictions``: positions
    the MLM heads run on (0: all ``text_len``)."""
    objectives = set(objectives)
    predicted = lambda cap: min(cap, text_len) if cap else text_len  # noqa: E731
    if stream == 'text':
        return batch * (text_forward(d, text_len)
                        + mlm_head_forward(d, predicted(mlm_predictions)))
    if stream == 'image':
        return batch * vision_forward(d) * (2 if 'mim' in objectives else 1)
    num_images = batch * (frames if stream == 'video' else 1)
    total = num_images * vision_forward(d)
    if 'mim' in objectives:
        total += batch * vision_forward(d)
    pairs = batch * (region_texts if stream == 'region' else 1)
    fusion = fusion_forward(d, text_len)
    # Per fusion pass: every image's keys/values once; a region text's own token per row.
    image_kv = batch * cross_attention_kv_forward(d, d.num_patches + 1)
    region_kv = cross_attention_kv_forward(d, 1) if stream == 'region' else 0
    if 'itc' in objectives or 'itm' in objectives:
        total += pairs * (text_forward(d, text_len) + projection_forward(d))
        total += 2 * pairs * pairs * d.embed_dim  # similarity matrix
    if 'itm' in objectives:
        total += 3 * pairs * (fusion + region_kv) + image_kv
    if 'imlm' in objectives:
        total += pairs * (text_forward(d, text_len) + fusion + region_kv
                          + mlm_head_forward(d, predicted(imlm_predictions))) + image_kv
    if 'box' in objectives:
        total += pairs * fusion + image_kv
    return total


def train_step_flops(config, stream_sizes: dict) -> dict:
    """{stream: training FLOPs per step} and 'total'; ``stream_sizes[s]`` holds batch, text_len,
    region_texts, frames. Reference schedule counts every update's streams once."""
    d = Dims.from_config(config.model)
    out = {}
    for stream, sizes in stream_sizes.items():
        weights = {k for k, v in config.streams[stream].items() if float(v)}
        out[stream] = 3 * stream_forward_flops(
            d, stream, weights, **sizes,
            mlm_predictions=config.objectives.mlm.get('max_predictions', 0),
            imlm_predictions=config.objectives.imlm.get('max_predictions', 0))
    out['total'] = int(np.sum(list(out.values())))
    return out
