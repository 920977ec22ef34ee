"""Heads on token 0 of the encoders (docs/design.md §6): ITC projections, ITM and box MLPs."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from xfm_jax.models import layers


class Projection(nn.Module):
    """Linear(D -> embed_dim) on token 0, L2-normalised.  [B, T, D] -> [B, embed_dim] (fp32)."""
    embed_dim: int
    param_dtype: str = 'float32'

    @nn.compact
    def __call__(self, tokens):
        x = layers.dense(self.embed_dim, ('embed', 'proj'), dtype=jnp.float32,
                         param_dtype=layers.dtype_of(self.param_dtype), name='dense')(
                             tokens[:, 0].astype(jnp.float32))
        return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class MLPHead(nn.Module):
    """Linear(D -> 2D) -> LN(1e-5) -> GELU -> Linear(2D -> out) on token 0.  [B, T, D] -> [B, out].

    Submodule names 0, 1, 3 follow the reference nn.Sequential (index 2 is the GELU).
    """
    out_features: int
    dtype: str = 'float32'
    param_dtype: str = 'float32'

    @nn.compact
    def __call__(self, tokens):
        dtype, pdtype = layers.dtype_of(self.dtype), layers.dtype_of(self.param_dtype)
        width = tokens.shape[-1]
        x = layers.dense(2 * width, ('embed', 'mlp'), dtype=dtype, param_dtype=pdtype,
                         name='0')(tokens[:, 0])
        x = nn.LayerNorm(epsilon=1e-5, dtype=dtype, param_dtype=pdtype, name='1',
                         scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('mlp',)),
                         bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)))(x)
        x = layers.exact_gelu(x)
        return layers.dense(self.out_features, ('mlp', None), dtype=dtype, param_dtype=pdtype,
                            name='3')(x).astype(jnp.float32)


def box_from_logits(logits):
    """[B, 4] -> sigmoid normalised (cx, cy, w, h)."""
    return jax.nn.sigmoid(logits)
