"""BEiT-2 style ViT: the vision encoder of X-FM and X²-VLM (docs/design.md §3).

Pre-LN blocks with layer scale, a relative position bias table per block (BEiT index with three
extra entries for cls->patch, patch->cls and cls->cls), q/v biases without a key bias, exact GELU
and linear drop-path. The output replaces the cls token by the mean of the fc_norm'ed patches.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xfm_jax.data import PIXEL_OFFSET, PIXEL_SCALE  # constants: the package imports no TF
from xfm_jax.models import layers


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    layer_scale_init: float = 0.1
    drop_path_rate: float = 0.1
    ln_eps: float = 1e-6
    use_mask_token: bool = True
    # An absolute position embedding added to [cls] + patches (docs/design.md §3): 'none' (the
    # papers' BEiT-2 towers: position only through the relative tables, which start at zero),
    # 'learned' (BEiT's use_abs_pos_emb: a parameter, std 0.02) or 'sincos' (MAE's fixed 2-D
    # sine-cosine table: position visible from the first step, no parameter).
    abs_pos_emb: str = 'none'
    dtype: str = 'float32'
    param_dtype: str = 'float32'
    scan_layers: bool = False
    remat_policy: str = 'none'
    attention_impl: str = 'einsum'  # layers.ATTENTION_IMPLS

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid ** 2


def num_relative_distances(grid: int) -> int:
    return (2 * grid - 1) ** 2 + 3


@functools.lru_cache(maxsize=None)
def sincos_position_embedding(grid: int, width: int) -> np.ndarray:
    """MAE's fixed 2-D sine-cosine position embedding over [cls] + grid*grid patches (row-major):
    float32 [1+N, D], zeros for cls; half the channels encode the row, half the column, each
    as sines and cosines of D/4 frequencies 1 / 10000^(i / (D/4))."""
    if width % 4:
        raise ValueError(f"model.vision.abs_pos_emb='sincos' needs a width divisible by 4, "
                         f'got {width}.')
    omega = 1.0 / 10000.0 ** (np.arange(width // 4, dtype=np.float64) / (width / 4))
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing='ij')

    def encode(positions):
        angles = positions.reshape(-1, 1) * omega[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    table = np.concatenate([encode(rows), encode(cols)], axis=1)
    return np.concatenate([np.zeros((1, width)), table], axis=0).astype(np.float32)


def relative_position_index(grid: int) -> np.ndarray:
    """BEiT's relative position index over [cls] + grid*grid patches: int32 [1+N, 1+N].

    Patch pairs index the (2g-1)^2 table by (dy, dx); the last three entries are
    cls->patch, patch->cls and cls->cls.
    """
    coords = np.stack(np.meshgrid(np.arange(grid), np.arange(grid), indexing='ij')).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :] + grid - 1  # [2, N, N], each in [0, 2g-2]
    patch_index = rel[0] * (2 * grid - 1) + rel[1]
    n = num_relative_distances(grid)
    index = np.zeros((grid * grid + 1,) * 2, dtype=np.int32)
    index[1:, 1:] = patch_index
    index[0, 1:] = n - 3
    index[1:, 0] = n - 2
    index[0, 0] = n - 1
    return index


def drop_path(x, rate, deterministic, rng_module: nn.Module):
    """Stochastic depth per example; ``rate`` may be a traced scalar (scanned layers)."""
    if deterministic:
        return x
    keep = 1.0 - jnp.asarray(rate, jnp.float32)
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(rng_module.make_rng('dropout'), keep, shape)
    return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros((), x.dtype))


class VisionBlock(nn.Module):
    """x += g1 * Attn(LN1(x)) ; x += g2 * MLP(LN2(x)).  [B, 1+N, D] -> [B, 1+N, D]."""
    config: VisionConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, drop_rate):
        cfg = self.config
        dtype, pdtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        grid = round((x.shape[1] - 1) ** 0.5)
        table = self.param(
            'relative_position_bias_table',
            nn.with_logical_partitioning(nn.initializers.zeros, ('relpos', 'heads')),
            (num_relative_distances(grid), cfg.num_heads), pdtype)
        bias = jnp.asarray(table, jnp.float32)[relative_position_index(grid)]  # [Q, K, H]
        bias = jnp.transpose(bias, (2, 0, 1))[None]
        scale_init = nn.with_logical_partitioning(
            nn.initializers.constant(cfg.layer_scale_init), ('embed',))
        gamma_1 = self.param('gamma_1', scale_init, (cfg.width,), pdtype)
        gamma_2 = self.param('gamma_2', scale_init, (cfg.width,), pdtype)

        h = layers.layer_norm(cfg.ln_eps, dtype=dtype, param_dtype=pdtype, name='norm1')(x)
        h = layers.MultiHeadAttention(
            cfg.num_heads, dtype=dtype, param_dtype=pdtype, key_bias=False, impl=cfg.attention_impl,
            name='attn')(h, bias=bias)
        # Layer scales multiply in fp32 (their gradients sum over batch and tokens).
        x = x + drop_path((gamma_1 * h).astype(dtype), drop_rate, self.deterministic, self)
        h = layers.layer_norm(cfg.ln_eps, dtype=dtype, param_dtype=pdtype, name='norm2')(x)
        h = layers.Mlp(cfg.mlp_dim, dtype=dtype, param_dtype=pdtype, name='mlp')(h)
        x = x + drop_path((gamma_2 * h).astype(dtype), drop_rate, self.deterministic, self)
        return layers.constrain(x, 'batch', 'length', 'act_embed'), None


class VisionTransformer(nn.Module):
    """Images [B, H, W, 3] (CLIP-normalised) -> tokens [B, 1+N, D]; token 0 = mean patch token.

    ``mim_mask`` [B, N] bool replaces those patch embeddings by the learned mask token (MIM).
    """
    config: VisionConfig

    @nn.compact
    def __call__(self, images, mim_mask=None, *, train: bool = False):
        cfg = self.config
        dtype, pdtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        self._check_images(images)
        images = normalize_pixels(images)
        x = nn.Conv(
            cfg.width, (cfg.patch_size, cfg.patch_size), strides=(cfg.patch_size,) * 2,
            padding='VALID', dtype=dtype, param_dtype=pdtype,
            kernel_init=nn.with_logical_partitioning(
                layers.default_kernel_init, (None, None, None, 'embed')),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
            promote_dtype=layers.keep_bias_dtype, name='patch_embed')(images).astype(dtype)
        batch = x.shape[0]
        x = x.reshape(batch, -1, cfg.width)
        token_init = nn.with_logical_partitioning(layers.default_kernel_init, (None, None, 'embed'))
        if cfg.use_mask_token:
            mask_token = self.param('mask_token', token_init, (1, 1, cfg.width), pdtype)
            if mim_mask is not None:
                # Selected in the tokens' parameter dtype: their gradients sum over the batch.
                x = jnp.where(mim_mask[..., None], mask_token, x).astype(dtype)
        elif mim_mask is not None:
            raise ValueError('mim_mask given but model.vision.use_mask_token is False.')
        cls_token = self.param('cls_token', token_init, (1, 1, cfg.width), pdtype)
        x = jnp.concatenate([jnp.broadcast_to(cls_token, (batch, 1, cfg.width)).astype(dtype), x], 1)
        if cfg.abs_pos_emb == 'learned':
            pos_embed = self.param('pos_embed', token_init, (1, 1 + cfg.num_patches, cfg.width),
                                   pdtype)
            x = (x + pos_embed).astype(dtype)
        elif cfg.abs_pos_emb == 'sincos':
            x = (x + jnp.asarray(sincos_position_embedding(cfg.grid, cfg.width), dtype)).astype(dtype)
        elif cfg.abs_pos_emb != 'none':
            raise ValueError(f"model.vision.abs_pos_emb must be 'none', 'learned' or 'sincos', "
                             f'got {cfg.abs_pos_emb!r}.')
        x = layers.constrain(x, 'batch', 'length', 'act_embed')

        drop_rates = jnp.linspace(0.0, cfg.drop_path_rate, cfg.depth)
        x = layers.LayerStack(
            VisionBlock, dict(config=cfg), cfg.depth, scan=cfg.scan_layers,
            remat=cfg.remat_policy, name_prefix='blocks', name='encoder',
        )(x, drop_rates, deterministic=not train)

        patches = layers.layer_norm(cfg.ln_eps, dtype=dtype, param_dtype=pdtype,
                                    name='fc_norm')(x[:, 1:])
        pooled = jnp.mean(patches.astype(jnp.float32), axis=1, keepdims=True).astype(patches.dtype)
        return jnp.concatenate([pooled, patches], axis=1)

    def _check_images(self, images):
        cfg = self.config
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f'Expected images of shape [B, H, W, 3], got {tuple(images.shape)}.')
        height, width = images.shape[1:3]
        if height % cfg.patch_size or width % cfg.patch_size:
            raise ValueError(
                f'Image size {height}x{width} is not divisible by the patch size {cfg.patch_size}.')
        if (height, width) != (cfg.image_size, cfg.image_size):
            raise ValueError(
                f'Expected images of {cfg.image_size}x{cfg.image_size} (model.vision.image_size), got '
                f'{height}x{width}. For another resolution set model.vision.image_size and resize '
                'the relative position tables with xfm_jax.convert.relpos.resize_relative_position_table.')


def normalize_pixels(images):
    """Training batches carry uint8 pixels [0, 255] (a quarter of float32's bytes through the
    host and onto the device): CLIP-normalised here, in float32, by the multiply-add the
    pipeline's ``image_ops.normalize`` computes. Float images (the evaluators', the Python
    API's) come normalised already and pass unchanged."""
    if images.dtype != jnp.uint8:
        return images
    return (images.astype(jnp.float32) * jnp.asarray(PIXEL_SCALE, jnp.float32)
            + jnp.asarray(PIXEL_OFFSET, jnp.float32))


def region_tokens(image_tokens, patch_mask):
    """The region path: each box's token and the keys that may attend to it.

    Args:
      image_tokens: [B, 1+N, D] vision encoder output.
      patch_mask: [B, T, N] bool, the patches inside each of an image's T boxes.
    Returns:
      region [B*T, D]: the masked mean of the box's patch tokens, which stands in for token 0
        in front of its image's patch tokens (shared by the image's T boxes);
      key_mask [B*T, 1+N] int32: 1 for the region token and the box's patches.
    """
    patches = image_tokens[:, 1:]
    weights = patch_mask.astype(jnp.float32)
    count = jnp.maximum(weights.sum(axis=-1, keepdims=True), 1.0)
    region = jnp.einsum('btn,bnd->btd', weights, patches.astype(jnp.float32)) / count
    key_mask = jnp.concatenate(
        [jnp.ones_like(patch_mask[..., :1], jnp.int32), patch_mask.astype(jnp.int32)], axis=-1)
    rows = patch_mask.shape[0] * patch_mask.shape[1]
    return region.reshape(rows, -1).astype(patches.dtype), key_mask.reshape(rows, -1)
