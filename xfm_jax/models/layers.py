"""Building blocks shared by the vision, text and fusion towers.

Every parameter is created with logical axis names and the main activations are constrained with
logical names, so that sharding is chosen by a rule table (``xfm_jax.partitioning``), not by code.

Parameter axes: embed, heads, kv (head dim), mlp, vocab, positions, relpos, proj, layers (leading
axis of ``nn.scan``-stacked layers). Activation axes: batch, length, act_embed, act_heads, act_mlp,
act_vocab.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# BERT's additive padding mask value for self-attention; X-VLM uses -1e9 (fp32) for
# cross-attention keys. Both are kept to match the reference numerics.
SELF_ATTENTION_MASK_VALUE = -10000.0
CROSS_ATTENTION_MASK_VALUE = -1e9

default_kernel_init = nn.initializers.truncated_normal(0.02)


def exact_gelu(x):
    """GELU with erf (flax's default nn.gelu is the tanh approximation, wrong for these models)."""
    return nn.gelu(x, approximate=False)


def dtype_of(name: str) -> Dtype:
    return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}[name]


def constrain(x, *names):
    return nn.with_logical_constraint(x, names)


class Dense(nn.Module):
    """A linear map whose kernel is created in its final multi-axis shape with logical names.

    (flax's DenseGeneral initialises a flat kernel and reshapes it, which breaks under active
    logical-axis rules.) ``num_in`` trailing input axes are contracted; ``features`` are the
    output axes. kernel: [*in_dims, *features], bias: [*features].
    """
    features: tuple[int, ...]
    names: tuple[str | None, ...]
    num_in: int = 1
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        in_dims = x.shape[x.ndim - self.num_in:]
        kernel = self.param(
            'kernel', nn.with_logical_partitioning(default_kernel_init, self.names),
            (*in_dims, *self.features), self.param_dtype)
        letters = 'abcdefgh'
        ins, outs = letters[:self.num_in], letters[self.num_in:self.num_in + len(self.features)]
        y = jnp.einsum(f'...{ins},{ins}{outs}->...{outs}', x.astype(self.dtype),
                       kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param(
                'bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                     self.names[self.num_in:]),
                self.features, self.param_dtype)
            # Added in the parameters' dtype: under bf16 compute the bias gradient (a sum over
            # every row) is then taken in fp32.
            y = (y + bias).astype(self.dtype)
        return y


def dense(features, names, *, dtype, param_dtype, use_bias=True, name=None, num_in=1):
    """``Dense`` with ``features`` an int or tuple; ``names`` lists input then output axes."""
    features = features if isinstance(features, tuple) else (features,)
    return Dense(features, tuple(names), num_in=num_in, use_bias=use_bias, dtype=dtype,
                 param_dtype=param_dtype, name=name)


def keep_bias_dtype(inputs, kernel, bias, dtype=None):
    """A flax ``promote_dtype`` that casts inputs and kernel to ``dtype`` and leaves the bias in
    the parameters' dtype, so its gradient sums in fp32 under bf16 compute."""
    return inputs.astype(dtype), kernel.astype(dtype), bias


def layer_norm(eps, *, dtype, param_dtype, name=None):
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, param_dtype=param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)), name=name)


def take_rows(x, index):
    """Rows of ``x`` [R, ...] picked group by group: ``index`` [G, n] int holds positions inside
    group g's rows ``x[g * R/G : (g + 1) * R/G]`` -> [G * n, ...].

    Keeping each pick inside its group keeps it on the device that holds the group when the
    batch is sharded (set G to the number of batch shards, or a multiple). Groups of one row
    (G == R, every index 0) are a repeat, whose gradient is a sum rather than a scatter.
    """
    groups = index.shape[0]
    if x.shape[0] % groups:
        raise ValueError(f'take_rows: {x.shape[0]} rows do not split into {groups} groups.')
    if groups == x.shape[0]:
        return jnp.repeat(x, index.shape[1], axis=0)
    grouped = x.reshape(groups, x.shape[0] // groups, *x.shape[1:])
    return jax.vmap(lambda rows, i: rows[i])(grouped, index).reshape(-1, *x.shape[1:])


def padding_bias(mask, value):
    """[B, K] 0/1 key mask -> additive [B, 1, 1, K] float32 attention bias."""
    return (1.0 - mask.astype(jnp.float32))[:, None, None, :] * value


@jax.custom_vjp
def add_bias(x, bias):
    """``x + bias`` for a ``bias`` broadcast over leading axes of ``x`` (e.g. [V] onto [B, L, V],
    [1, H, Q, K] onto [B, H, Q, K]); the same values, a faster gradient.

    The bias gradient sums the output gradient over the broadcast axes. XLA on CPU reduces a
    leading axis of a large array slowly (the MLM bias over [rows, 50265]: ~0.5 s per step at
    420 rows; the relative position bias over the batch: ~0.4 s per layer at 40 x 6 x 197 x 197),
    so it is computed as a product with a vector of ones, which runs as a matmul.
    """
    return x + bias


def _add_bias_fwd(x, bias):
    # Residuals must be arrays: the bias itself and an empty array carry the shapes and dtypes.
    return x + bias, (bias, jnp.zeros((0,), x.dtype))


def _add_bias_bwd(residuals, grad):
    bias, x_like = residuals
    shape = (1,) * (grad.ndim - bias.ndim) + bias.shape
    rows = 0
    while rows < grad.ndim and shape[rows] == 1 and grad.shape[rows] != 1:
        rows += 1
    summed = grad.reshape(-1, *grad.shape[rows:]) if rows else grad[None]
    summed = jnp.tensordot(jnp.ones((summed.shape[0],), grad.dtype), summed, axes=(0, 0),
                           preferred_element_type=jnp.float32)
    # Broadcast axes after the leading run (none in this package's uses) are summed plainly.
    rest = tuple(i for i in range(summed.ndim) if shape[rows + i] == 1 and summed.shape[i] != 1)
    summed = summed.sum(axis=rest, keepdims=True) if rest else summed
    return grad.astype(x_like.dtype), summed.reshape(bias.shape).astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


ATTENTION_IMPLS = ('einsum', 'xla', 'cudnn')


def _pad_length_to_even(q, k, v, bias):
    """One zero query row and one masked key at the end of odd lengths ([B, T, H, D] q and
    [B, S, H, D] k, v; bias broadcastable to [B, H, T, S]): cuDNN's training kernel with a bias
    needs even lengths (197 image tokens are odd)."""
    pad_q, pad_k = q.shape[1] % 2, k.shape[1] % 2
    if not (pad_q or pad_k):
        return q, k, v, bias
    q = jnp.pad(q, ((0, 0), (0, pad_q), (0, 0), (0, 0)))
    k = jnp.pad(k, ((0, 0), (0, pad_k), (0, 0), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, pad_k), (0, 0), (0, 0)))
    bias = jnp.zeros((1, 1, 1, k.shape[1] - pad_k), jnp.float32) if bias is None \
        else jnp.asarray(bias, jnp.float32)
    # Padded query rows (sliced off afterwards) get bias 0; the padded key is masked everywhere.
    bias = jnp.pad(bias, ((0, 0), (0, 0), (0, pad_q if bias.shape[2] > 1 else 0), (0, 0)))
    bias = jnp.pad(bias, ((0, 0), (0, 0), (0, 0), (0, pad_k)),
                   constant_values=CROSS_ATTENTION_MASK_VALUE)
    return q, k, v, bias


def fused_attention(q, k, v, bias, implementation: str):
    """softmax(q k^T / sqrt(D) + bias) v with ``jax.nn.dot_product_attention``: q [B, T, H, D],
    k and v [B, S, H, D], bias broadcastable to [B, H, T, S] -> [B, T, H, D]. ``implementation``
    'xla' (any device) or 'cudnn' (NVIDIA flash attention; bf16/fp16 only). Softmax in fp32."""
    length = q.shape[1]
    if implementation == 'cudnn':
        q, k, v, bias = _pad_length_to_even(q, k, v, bias)
        bias = None if bias is None else bias.astype(q.dtype)  # cuDNN takes the inputs' dtype
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, implementation=implementation)
    return out[:, :length]


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections.

    ``key_bias=False`` with ``use_bias=True`` gives BEiT's attention (q and v biases, no key
    bias). Keys and values may come from another sequence of another width (cross-attention).
    ``impl`` 'einsum' writes the attention out; 'xla' / 'cudnn' call
    ``jax.nn.dot_product_attention`` with that implementation wherever no dropout on the
    probabilities is active (deterministic passes or ``dropout_rate`` 0), and keep the einsum
    path where it is. Logits and softmax are fp32 in every path.

    Args of __call__:
      x: [B, Q, D] queries.  context: [B, K, Dc] keys/values (defaults to x).
      bias: additive float32 logits bias broadcastable to [B, H, Q, K] (padding masks, relative
        position bias).
      context_rows: [G, n] int (G * n = B), which context row each query row reads, as
        ``take_rows`` indexes; the context then has one row per image and its keys/values are
        projected once per image, not once per query row. None: query row i reads context row i.
      context_first: [B, Dc] a per-query-row token that replaces context token 0 (a region's
        token in front of its image's shared patch tokens); projected per row.
    Returns [B, Q, D].
    """
    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    key_bias: bool = True
    dropout_rate: float = 0.0
    deterministic: bool = True
    impl: str = 'einsum'

    @nn.compact
    def __call__(self, x, context=None, bias=None, context_rows=None, context_first=None):
        if self.impl not in ATTENTION_IMPLS:
            raise ValueError(f'model.attention_impl must be one of {ATTENTION_IMPLS}, '
                             f'got {self.impl!r}')
        context = x if context is None else context
        width = x.shape[-1]
        head_dim = width // self.num_heads
        proj = functools.partial(dense, (self.num_heads, head_dim), dtype=self.dtype,
                                 param_dtype=self.param_dtype)
        q = proj(('embed', 'heads', 'kv'), use_bias=self.use_bias, name='query')(x)
        key = proj(('embed', 'heads', 'kv'), use_bias=self.use_bias and self.key_bias,
                   name='key')
        value = proj(('embed', 'heads', 'kv'), use_bias=self.use_bias, name='value')
        k, v = key(context), value(context)
        if context_rows is not None:
            # Picked in fp32: their gradient sums over an image's rows, in fp32 under bf16.
            k, v = (take_rows(t.astype(jnp.float32), context_rows).astype(self.dtype)
                    for t in (k, v))
        if context_first is not None:
            k = k.at[:, 0].set(key(context_first).astype(k.dtype))
            v = v.at[:, 0].set(value(context_first).astype(v.dtype))
        q = constrain(q, 'batch', 'length', 'act_heads', 'act_kv')
        k = constrain(k, 'batch', 'length', 'act_heads', 'act_kv')
        v = constrain(v, 'batch', 'length', 'act_heads', 'act_kv')
        if self.impl != 'einsum' and (self.deterministic or self.dropout_rate == 0):
            out = fused_attention(q, k, v, bias, self.impl)
        else:
            q = q * jnp.asarray(head_dim ** -0.5, q.dtype)
            logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)
            if bias is not None:
                logits = add_bias(logits, bias)
            probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
            probs = nn.Dropout(self.dropout_rate)(probs, deterministic=self.deterministic)
            out = jnp.einsum('bhqk,bkhd->bqhd', probs, v)
        out = dense(width, ('heads', 'kv', 'embed'), num_in=2, dtype=self.dtype,
                    param_dtype=self.param_dtype, use_bias=self.use_bias, name='out')(out)
        return constrain(out, 'batch', 'length', 'act_embed')


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear. [B, L, D] -> [B, L, D]."""
    hidden_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    names: tuple[str, str] = ('fc1', 'fc2')

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        h = dense(self.hidden_dim, ('embed', 'mlp'), dtype=self.dtype,
                  param_dtype=self.param_dtype, name=self.names[0])(x)
        h = constrain(exact_gelu(h), 'batch', 'length', 'act_mlp')
        return dense(width, ('mlp', 'embed'), dtype=self.dtype, param_dtype=self.param_dtype,
                     name=self.names[1])(h)


def remat_policy(name: str):
    policies = {
        'full': jax.checkpoint_policies.nothing_saveable,
        'dots': jax.checkpoint_policies.checkpoint_dots,
        'dots_no_batch': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    }
    if name not in policies:
        raise ValueError(f"model.remat_policy must be one of {['none', *policies]}, got {name!r}")
    return policies[name]


class LayerStack(nn.Module):
    """Applies ``depth`` copies of a layer, looped or with ``nn.scan``, optionally rematerialised.

    ``layer(**layer_kwargs, deterministic=...)`` is called as ``layer(carry, per_layer, *broadcast) -> (carry, None)`` where
    ``per_layer`` is that layer's entry of ``per_layer_values`` (e.g. its drop-path rate). Looped
    layers are named ``{name_prefix}_{i}``; scanned ones share one module ``{name_prefix}`` whose
    parameters gain a leading 'layers' axis. The converter maps between the two forms.
    """
    layer: type[nn.Module]
    layer_kwargs: dict
    depth: int
    scan: bool = False
    remat: str = 'none'
    name_prefix: str = 'layers'

    @nn.compact
    def __call__(self, x, per_layer_values, *broadcast, deterministic: bool = True):
        layer_cls = self.layer
        kwargs = dict(self.layer_kwargs, deterministic=deterministic)
        if self.remat != 'none':
            layer_cls = nn.remat(layer_cls, policy=remat_policy(self.remat), prevent_cse=not self.scan)
        if self.scan:
            scanned = nn.scan(
                layer_cls, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                in_axes=(0,) + (nn.broadcast,) * len(broadcast), length=self.depth,
                metadata_params={nn.PARTITION_NAME: 'layers'})
            x, _ = scanned(**kwargs, name=self.name_prefix)(
                x, per_layer_values, *broadcast)
            return x
        for i in range(self.depth):
            x, _ = layer_cls(**kwargs, name=f'{self.name_prefix}_{i}')(
                x, per_layer_values[i], *broadcast)
        return x
