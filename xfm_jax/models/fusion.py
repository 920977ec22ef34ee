"""The fusion encoder: post-LN self-attention -> cross-attention(image) -> FFN (docs/design.md §5).

X-FM: a separate, randomly initialised stack with its own MLM decoder table. X²-VLM: layers 12-17
of the BERT stack, sharing the text encoder's MLM head. Both are this module with another config.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from flax import traverse_util

from xfm_jax.models import layers
from xfm_jax.models.text import MLMHead, TextConfig, TransformerLayer


class FusionEncoder(nn.Module):
    """text hidden [B, L, Dt], text mask [B, L], image tokens [B, K, Dv], image mask [B, K]
    -> fused [B, L, Dt]; position 0 is the multimodal [CLS].

    Several texts may share an image: ``image_rows`` [G, n] (``layers.take_rows``) maps each
    text row to a row of image tokens [I, K, Dv], whose cross-attention keys and values are then
    projected once per image; ``first_token`` [B, Dv] replaces token 0 per text (a region's
    token). The key mask stays per text row.
    """
    config: TextConfig  # the text stack's settings; depth = number of fusion layers
    own_mlm_head: bool = False
    causal: bool = False  # text position t attends to positions <= t only (an answer decoder)

    def setup(self):
        cfg = self.config
        self.encoder = layers.LayerStack(
            TransformerLayer, dict(config=cfg, cross_attention=True), cfg.depth,
            scan=cfg.scan_layers, remat=cfg.remat_policy)
        if self.own_mlm_head:
            self.decoder_embedding = self.param(
                'decoder_embedding',
                nn.with_logical_partitioning(layers.default_kernel_init, ('vocab', 'embed')),
                (cfg.vocab_size, cfg.width), layers.dtype_of(cfg.param_dtype))
            self.mlm_head = MLMHead(cfg)

    def __call__(self, text_hidden, text_mask, image_tokens, image_mask, *, image_rows=None,
                 first_token=None, train: bool = False):
        rows = text_hidden.shape[0] if image_rows is not None else image_tokens.shape[0]
        if image_mask.shape != (rows, image_tokens.shape[1]):
            raise ValueError(f'image mask shape {tuple(image_mask.shape)} does not match '
                             f'{rows} rows of image tokens {tuple(image_tokens.shape)}.')
        if image_rows is not None and image_rows.size != rows:
            raise ValueError(f'image_rows {tuple(image_rows.shape)} must index one image per '
                             f'text row ({rows}).')
        self_bias = layers.padding_bias(text_mask, layers.SELF_ATTENTION_MASK_VALUE)
        if self.causal:  # BERT's decoder mask: (1 - causal * padding) * mask value
            length = text_mask.shape[1]
            future = jnp.triu(jnp.ones((length, length), bool), k=1)
            self_bias = jnp.minimum(
                self_bias, jnp.where(future, layers.SELF_ATTENTION_MASK_VALUE, 0.0))
        cross_bias = layers.padding_bias(image_mask, layers.CROSS_ATTENTION_MASK_VALUE)
        image_tokens = image_tokens.astype(layers.dtype_of(self.config.dtype))
        if first_token is not None:
            first_token = first_token.astype(image_tokens.dtype)
        return self.encoder(text_hidden, jnp.zeros(self.config.depth), self_bias, image_tokens,
                            cross_bias, image_rows, first_token, deterministic=not train)

    def without_cross_attention(self, text_hidden, text_mask, *, train: bool = False):
        """The fusion layers' self-attention and FFN only, for text without an image: X²-VLM's
        reference runs its whole BERT stack on text alone, skipping cross-attention where no
        image is given. [B, L, Dt], [B, L] -> [B, L, Dt].

        The same parameters (cross-attention ones left out) run through a stack built without
        cross-attention: flax gives one parameter scope to one module only.
        """
        cfg = self.config
        flat = traverse_util.flatten_dict(self.encoder.variables['params'], sep='/')
        shared = traverse_util.unflatten_dict(
            {path: v for path, v in flat.items() if '/cross_attention' not in path}, sep='/')
        stack = layers.LayerStack(
            TransformerLayer, dict(config=cfg, cross_attention=False), cfg.depth,
            scan=cfg.scan_layers, remat=cfg.remat_policy, parent=None)
        self_bias = layers.padding_bias(text_mask, layers.SELF_ATTENTION_MASK_VALUE)
        return stack.apply({'params': shared}, text_hidden, jnp.zeros(cfg.depth), self_bias,
                           deterministic=not train,
                           rngs={'dropout': self.make_rng('dropout')} if train else None)

    def mlm_logits(self, hidden):
        if not self.own_mlm_head:
            raise ValueError('This fusion encoder shares the text encoder MLM head.')
        return self.mlm_head(hidden, self.decoder_embedding)
