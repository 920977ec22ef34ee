"""BERT / RoBERTa language encoders, the post-LN transformer layer shared with the fusion stack,
and the MLM head with a decoder tied to a word-embedding table (docs/design.md §4-5).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from xfm_jax.models import layers


@dataclasses.dataclass(frozen=True)
class TextConfig:
    variant: str = 'bert'  # 'bert' | 'roberta': position ids and special tokens
    vocab_size: int = 30522
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 2
    pad_id: int = 0
    ln_eps: float = 1e-12
    dropout: float = 0.1
    dtype: str = 'float32'
    param_dtype: str = 'float32'
    scan_layers: bool = False
    remat_policy: str = 'none'
    attention_impl: str = 'einsum'  # layers.ATTENTION_IMPLS

    @property
    def max_length(self) -> int:
        # RoBERTa's positions start at pad_id + 1, so its table holds pad_id + 1 fewer tokens.
        return self.max_positions - (self.pad_id + 1 if self.variant == 'roberta' else 0)


def position_ids(ids, config: TextConfig):
    """BERT: 0..L-1. RoBERTa: cumsum over real tokens + pad_id (first real token gets pad_id+1,
    padding gets pad_id)."""
    if config.variant == 'roberta':
        real = (ids != config.pad_id).astype(jnp.int32)
        return jnp.cumsum(real, axis=1) * real + config.pad_id
    return jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)


def _embed(num, features, names, pdtype, name):
    return nn.Embed(num, features, param_dtype=pdtype, name=name,
                    embedding_init=nn.with_logical_partitioning(layers.default_kernel_init, names))


class TextEmbeddings(nn.Module):
    """ids [B, L] -> LN(word + position + token_type) [B, L, D]."""
    config: TextConfig

    def setup(self):
        cfg = self.config
        pdtype = layers.dtype_of(cfg.param_dtype)
        self.word_embeddings = _embed(cfg.vocab_size, cfg.width, ('vocab', 'embed'), pdtype,
                                      'word_embeddings')
        self.position_embeddings = _embed(cfg.max_positions, cfg.width, ('positions', 'embed'),
                                          pdtype, 'position_embeddings')
        self.token_type_embeddings = _embed(cfg.type_vocab_size, cfg.width, (None, 'embed'), pdtype,
                                            'token_type_embeddings')
        self.norm = layers.layer_norm(cfg.ln_eps, dtype=layers.dtype_of(cfg.dtype),
                                      param_dtype=pdtype)
        self.dropout = nn.Dropout(cfg.dropout)

    def __call__(self, ids, *, train: bool = False):
        cfg = self.config
        x = (self.word_embeddings(ids) + self.position_embeddings(position_ids(ids, cfg))
             + self.token_type_embeddings(jnp.zeros_like(ids)))
        # The sum stays in the parameters' dtype; LayerNorm computes in fp32, returns cfg.dtype.
        x = self.dropout(self.norm(x), deterministic=not train)
        return layers.constrain(x, 'batch', 'length', 'act_embed')

    def decoder_table(self):
        """The word-embedding matrix [V, D], shared with the tied MLM decoder."""
        return self.word_embeddings.embedding


class TransformerLayer(nn.Module):
    """Post-LN layer: self-attn -> [cross-attn over context] -> FFN, each + residual + LN.

    __call__(x [B, L, D], _, self_bias [B, 1, 1, L], context [B, K, Dc] | None,
    context_bias [B, 1, 1, K] | None, context_rows, context_first) -> ([B, L, D], None); the
    signature fits LayerStack. ``context_rows`` / ``context_first``: shared image rows and
    per-row token 0, see ``layers.MultiHeadAttention``.
    """
    config: TextConfig
    cross_attention: bool = False
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, _unused, self_bias, context=None, context_bias=None,
                 context_rows=None, context_first=None):
        cfg = self.config
        dtype, pdtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        dropout = nn.Dropout(cfg.dropout)

        def sublayer(h, residual, norm_name):
            h = dropout(h, deterministic=self.deterministic)
            return layers.layer_norm(cfg.ln_eps, dtype=dtype, param_dtype=pdtype,
                                     name=norm_name)(residual + h)

        attention = lambda name: layers.MultiHeadAttention(  # noqa: E731
            cfg.num_heads, dtype=dtype, param_dtype=pdtype, dropout_rate=cfg.dropout,
            deterministic=self.deterministic, impl=cfg.attention_impl, name=name)
        x = sublayer(attention('attention')(x, bias=self_bias), x, 'attention_norm')
        if self.cross_attention:
            h = attention('cross_attention')(x, context, bias=context_bias,
                                             context_rows=context_rows,
                                             context_first=context_first)
            x = sublayer(h, x, 'cross_attention_norm')
        h = layers.Mlp(cfg.mlp_dim, dtype=dtype, param_dtype=pdtype,
                       names=('intermediate', 'output'), name='ffn')(x)
        x = sublayer(h, x, 'output_norm')
        return layers.constrain(x, 'batch', 'length', 'act_embed'), None


class MLMHead(nn.Module):
    """dense -> GELU -> LN -> tied decoder + bias.  [B, L, D], table [V, D] -> fp32 logits
    [B, L, V]."""
    config: TextConfig

    @nn.compact
    def __call__(self, x, decoder_table):
        cfg = self.config
        dtype, pdtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        x = layers.dense(cfg.width, ('embed', 'mlp'), dtype=dtype, param_dtype=pdtype,
                         name='dense')(x)
        x = layers.layer_norm(cfg.ln_eps, dtype=dtype, param_dtype=pdtype,
                              name='norm')(layers.exact_gelu(x))
        bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('vocab',)),
                          (cfg.vocab_size,), pdtype)
        # fp32 logits (and bias) for the vocabulary-wide softmax, whatever the compute dtype.
        logits = jnp.einsum('bld,vd->blv', x, decoder_table.astype(dtype),
                            preferred_element_type=jnp.float32)
        logits = layers.add_bias(logits, bias.astype(jnp.float32))
        return layers.constrain(logits, 'batch', 'length', 'act_vocab')


def check_text(ids, mask, config: TextConfig, what: str = 'input_ids'):
    if ids.ndim != 2:
        raise ValueError(f'Expected {what} of shape [B, L], got {tuple(ids.shape)}.')
    if mask.shape != ids.shape:
        raise ValueError(f'attention_mask shape {tuple(mask.shape)} != {what} shape '
                         f'{tuple(ids.shape)}.')
    if ids.shape[1] > config.max_length:
        raise ValueError(
            f'Text length {ids.shape[1]} exceeds the position table: at most {config.max_length} '
            f'tokens for model.text.max_positions={config.max_positions} ({config.variant}).')


class TextEncoder(nn.Module):
    """The language encoder: ids [B, L], mask [B, L] -> hidden [B, L, D]; plus its MLM head."""
    config: TextConfig

    def setup(self):
        cfg = self.config
        self.embeddings = TextEmbeddings(cfg)
        self.encoder = layers.LayerStack(
            TransformerLayer, dict(config=cfg), cfg.depth, scan=cfg.scan_layers,
            remat=cfg.remat_policy)
        self.mlm_head = MLMHead(cfg)

    def __call__(self, ids, mask, *, train: bool = False):
        check_text(ids, mask, self.config)
        x = self.embeddings(ids, train=train)
        bias = layers.padding_bias(mask, layers.SELF_ATTENTION_MASK_VALUE)
        return self.encoder(x, jnp.zeros(self.config.depth), bias, deterministic=not train)

    def mlm_logits(self, hidden):
        return self.mlm_head(hidden, self.embeddings.decoder_table())
