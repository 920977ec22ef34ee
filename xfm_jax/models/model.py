"""X-FM and X²-VLM as one composition of the towers: encode_image, encode_text, fuse, heads.

Encoders know nothing of objectives. Objectives receive this module bound to parameters
(``model.bind(variables, rngs=...)``) and call the methods they need.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from xfm_jax.models import heads, layers
from xfm_jax.models.fusion import FusionEncoder
from xfm_jax.models.text import TextConfig, TextEncoder
from xfm_jax.models.vision import VisionConfig, VisionTransformer, region_tokens


class VisionLanguageModel(nn.Module):
    """The whole model. Build it from a config with :func:`build_model`."""
    vision: VisionConfig
    text: TextConfig
    fusion: TextConfig
    family: str = 'xfm'
    own_fusion_mlm_head: bool = True
    embed_dim: int = 256
    temp_init: float = 0.07
    stop_gradient_text: bool = True
    video_frames: int = 0

    def setup(self):
        self.vision_encoder = VisionTransformer(self.vision)
        self.text_encoder = TextEncoder(self.text)
        self.fusion_encoder = FusionEncoder(self.fusion, own_mlm_head=self.own_fusion_mlm_head)
        pdtype = self.text.param_dtype
        self.vision_proj = heads.Projection(self.embed_dim, pdtype)
        self.text_proj = heads.Projection(self.embed_dim, pdtype)
        self.itm_head = heads.MLPHead(2, self.text.dtype, pdtype)
        self.bbox_head = heads.MLPHead(4, self.text.dtype, pdtype)
        self.temp = self.param('temp', nn.initializers.constant(self.temp_init), (),
                               layers.dtype_of(pdtype))
        if self.video_frames:
            self.frame_embed = self.param(
                'frame_embed', nn.with_logical_partitioning(nn.initializers.zeros,
                                                            (None, 'frames', None, 'embed')),
                (1, self.video_frames, 1, self.vision.width), layers.dtype_of(pdtype))

    # ---- encoders ----------------------------------------------------------------------------
    def encode_image(self, images, mim_mask=None, *, train: bool = False):
        """[B, H, W, 3] (+ MIM mask [B, N]) -> [B, 1+N, Dv]."""
        return self.vision_encoder(images, mim_mask, train=train)

    def encode_video(self, frames, *, train: bool = False):
        """[B, F, H, W, 3] -> frames through the ViT + frame embedding, mean over F -> [B, 1+N, Dv]."""
        if not self.video_frames:
            raise ValueError('This model has no video path (model.video_frames is 0).')
        if frames.ndim != 5 or frames.shape[1] != self.video_frames:
            raise ValueError(f'Expected frames [B, {self.video_frames}, H, W, 3] '
                             f'(model.video_frames), got {tuple(frames.shape)}.')
        batch, num_frames = frames.shape[:2]
        tokens = self.encode_image(frames.reshape(batch * num_frames, *frames.shape[2:]),
                                   train=train)
        tokens = tokens.reshape(batch, num_frames, *tokens.shape[1:])
        tokens = tokens + self.frame_embed.astype(tokens.dtype)
        return jnp.mean(tokens.astype(jnp.float32), axis=1).astype(tokens.dtype)

    def encode_text(self, ids, mask, *, train: bool = False):
        """[B, L] ids and mask -> language encoder hidden states [B, L, Dt]."""
        return self.text_encoder(ids, mask, train=train)

    def fuse(self, text_hidden, text_mask, image_tokens, image_mask=None, *, image_rows=None,
             first_token=None, train: bool = False):
        """Language hidden states attend to image tokens -> [B, L, Dt].

        ``image_rows`` / ``first_token``: texts sharing images, see ``FusionEncoder``; the
        image mask is then per text, [B, K]. X-FM pre-training feeds the language output
        through ``stop_gradient`` so that only text MLM and ITC train the language encoder
        (``model.stop_gradient_text``).
        """
        if self.stop_gradient_text:
            text_hidden = jax.lax.stop_gradient(text_hidden)
        if image_mask is None:
            image_mask = jnp.ones((text_hidden.shape[0], image_tokens.shape[1]), jnp.int32)
        return self.fusion_encoder(text_hidden, text_mask, image_tokens, image_mask,
                                   image_rows=image_rows, first_token=first_token, train=train)

    def encode_text_for_mlm(self, ids, mask, *, train: bool = False):
        """The hidden states the text MLM head reads, [B, L] -> [B, L, Dt]. X-FM: the language
        encoder's output. X²-VLM: its one BERT stack in full, the fusion layers without
        cross-attention (no image), as the reference computes text-only MLM."""
        hidden = self.encode_text(ids, mask, train=train)
        if self.family == 'x2vlm':
            hidden = self.fusion_encoder.without_cross_attention(hidden, mask, train=train)
        return hidden

    # ---- heads -------------------------------------------------------------------------------
    def text_mlm_logits(self, text_hidden):
        return self.text_encoder.mlm_logits(text_hidden)

    def fusion_mlm_logits(self, fused):
        if self.own_fusion_mlm_head:
            return self.fusion_encoder.mlm_logits(fused)
        return self.text_encoder.mlm_logits(fused)

    def image_embedding(self, image_tokens):
        """L2-normalised ITC embedding of token 0: [B, embed_dim] fp32."""
        return self.vision_proj(image_tokens)

    def text_embedding(self, text_hidden):
        return self.text_proj(text_hidden)

    def itm_logits(self, fused):
        """[B, L, Dt] -> [B, 2] (index 1 = match)."""
        return self.itm_head(fused)

    def box_prediction(self, fused):
        """[B, L, Dt] -> [B, 4] normalised (cx, cy, w, h)."""
        return heads.box_from_logits(self.bbox_head(fused))

    def temperature(self):
        return self.temp

    def region(self, image_tokens, patch_mask):
        """Region tokens [B*T, Dv] + box key masks [B*T, 1+N] of [B, T, N] patch masks: see
        ``vision.region_tokens``."""
        return region_tokens(image_tokens, patch_mask)

    def __call__(self, images, ids, mask, frames=None, *, train: bool = False):
        """Touches every parameter (used by ``init``); returns the main outputs."""
        mim_mask = None
        if self.vision.use_mask_token:
            mim_mask = jnp.zeros((images.shape[0], self.vision.num_patches), bool)
        image_tokens = self.encode_image(images, mim_mask, train=train)
        text_hidden = self.encode_text(ids, mask, train=train)
        fused = self.fuse(text_hidden, mask, image_tokens, train=train)
        out = dict(
            image_tokens=image_tokens, text_hidden=text_hidden, fused=fused,
            text_mlm_logits=self.text_mlm_logits(text_hidden),
            fusion_mlm_logits=self.fusion_mlm_logits(fused),
            image_embedding=self.image_embedding(image_tokens),
            text_embedding=self.text_embedding(text_hidden),
            itm_logits=self.itm_logits(fused), box=self.box_prediction(fused),
            temperature=self.temperature())
        if self.video_frames:
            if frames is None:
                frames = jnp.broadcast_to(images[:, None], (images.shape[0], self.video_frames,
                                                             *images.shape[1:]))
            out['video_tokens'] = self.encode_video(frames, train=train)
        return out


def build_model(config: ml_collections.ConfigDict) -> VisionLanguageModel:
    """``config`` is the ``model`` section of a run config (configs/common.py:model_config)."""
    common = dict(dtype=config.dtype, param_dtype=config.param_dtype,
                  scan_layers=config.scan_layers, remat_policy=config.remat_policy,
                  # Model configs stored before this key existed run the einsum path.
                  attention_impl=config.get('attention_impl', 'einsum'))
    vision = VisionConfig(**{k: config.vision[k] for k in (
        'image_size', 'patch_size', 'width', 'depth', 'num_heads', 'mlp_dim', 'layer_scale_init',
        'drop_path_rate', 'ln_eps', 'use_mask_token')},
        # Model configs stored before this key existed have no absolute position embedding.
        abs_pos_emb=config.vision.get('abs_pos_emb', 'none'), **common)
    text_fields = ('variant', 'vocab_size', 'width', 'depth', 'num_heads', 'mlp_dim',
                   'max_positions', 'type_vocab_size', 'pad_id', 'ln_eps', 'dropout')
    text = TextConfig(**{k: config.text[k] for k in text_fields}, **common)
    fusion = dataclasses.replace(text, depth=config.fusion.depth)
    return VisionLanguageModel(
        vision=vision, text=text, fusion=fusion, family=config.family,
        own_fusion_mlm_head=config.fusion.own_mlm_head, embed_dim=config.embed_dim,
        temp_init=config.temp_init, stop_gradient_text=config.stop_gradient_text,
        video_frames=config.video_frames)


def dummy_inputs(model: VisionLanguageModel, batch: int = 1, text_len: int = 8):
    """Shape-only inputs for ``init`` / ``eval_shape``."""
    size = model.vision.image_size
    return (jnp.zeros((batch, size, size, 3), jnp.float32),
            jnp.ones((batch, text_len), jnp.int32) * (model.text.pad_id + 3),
            jnp.ones((batch, text_len), jnp.int32))


def init_variables(model: VisionLanguageModel, rng, batch: int = 1, text_len: int = 8):
    """Initialised variables (boxed with logical axis metadata)."""
    params_rng, dropout_rng = jax.random.split(rng)
    return model.init({'params': params_rng, 'dropout': dropout_rng},
                      *dummy_inputs(model, batch, text_len))


def abstract_variables(model: VisionLanguageModel):
    """``jax.eval_shape`` of the init: shapes and logical axes, no memory used."""
    return jax.eval_shape(lambda rng: init_variables(model, rng), jax.random.key(0))


def count_params(tree) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nn.unbox(tree)))
