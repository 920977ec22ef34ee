"""Image-text matching with hard negatives (ITM, docs/design.md §7.3).

Negatives are mined within contiguous groups of the batch (``settings.negative_groups``): the
reference mines in each device's LOCAL batch, so the train step sets the number of batch shards.
Keeping gathers inside a group also keeps them on the device that holds the group.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from xfm_jax.objectives.itc import similarity


def _grouped(x, num_groups: int):
    """[B, ...] -> [G, B/G, ...]."""
    if x.shape[0] % num_groups:
        raise ValueError(f'ITM: batch of {x.shape[0]} pairs is not divisible by '
                         f'itm.negative_groups={num_groups}.')
    return x.reshape(num_groups, x.shape[0] // num_groups, *x.shape[1:])


def sample_negatives(rng, image_embedding, text_embedding, temperature, image_id, valid,
                     num_groups: int):
    """Draws one hard negative text per image and one hard negative image per text.

    Within each group, image i draws text j with probability softmax_j(v_i . t_j / temp) over the
    allowed j: a different image id (same id = a positive, never drawn) and valid. Likewise text i
    draws image j. Similarities are stop_gradient'ed: sampling is not differentiated.

    Args:
      image_embedding, text_embedding: [B, E]; image_id [B] int; valid [B] float.
    Returns:
      neg_text_for_image [B] int32, neg_image_for_text [B] int32 (batch indices, always inside
      the anchor's group), has_negative [B] bool (false when the group holds no allowed pair;
      that row's index is then meaningless and must be excluded).
    """
    image_embedding = _grouped(jax.lax.stop_gradient(image_embedding), num_groups)
    text_embedding = _grouped(jax.lax.stop_gradient(text_embedding), num_groups)
    logits = jax.vmap(similarity, in_axes=(0, 0, None))(
        image_embedding, text_embedding, jax.lax.stop_gradient(temperature))  # [G, n, n]
    ids, ok = _grouped(image_id, num_groups), _grouped(valid, num_groups) > 0
    # Row = anchor, column = candidate; the condition is symmetric in the ids.
    allowed = (ids[:, :, None] != ids[:, None, :]) & ok[:, None, :]
    text_rng, image_rng = jax.random.split(rng)
    neg_text = jax.random.categorical(text_rng, jnp.where(allowed, logits, -jnp.inf))
    neg_image = jax.random.categorical(image_rng,
                                       jnp.where(allowed, jnp.swapaxes(logits, 1, 2), -jnp.inf))
    # Group-local indices -> batch indices.
    offset = (jnp.arange(num_groups, dtype=jnp.int32) * ids.shape[1])[:, None]
    return ((neg_text + offset).reshape(-1), (neg_image + offset).reshape(-1),
            allowed.any(axis=-1).reshape(-1))


def _take_in_groups(x, index, num_groups: int):
    """x[index] for indices that stay in their row's group, gathered group by group."""
    group_size = x.shape[0] // num_groups
    local = _grouped(index % group_size, num_groups)
    return jax.vmap(lambda xs, i: xs[i])(_grouped(x, num_groups), local).reshape(x.shape)


def _interleave(*xs):
    """k arrays [B, ...] -> [B*k, ...] with row i's k entries adjacent, so rows stay on the
    device that holds row i (a concatenation would move data across batch shards)."""
    return jnp.stack(xs, axis=1).reshape(-1, *xs[0].shape[1:])


def itm(model, enc: dict, batch: dict, rng, settings: ml_collections.ConfigDict):
    """Binary match CE over B' positives, B' (text, negative image) and B' (negative text, image)
    pairs run through the fusion encoder. Reads the pair view: ``image_tokens``, ``image_mask``,
    ``text_hidden``, ``attention_mask``, ``image_embedding``, ``text_embedding``, ``image_id``,
    ``valid``. ``rng`` draws the negatives."""
    del batch  # the pair view holds everything
    groups = settings.negative_groups
    valid = enc['valid']
    neg_text, neg_image, has_negative = sample_negatives(
        rng, enc['image_embedding'], enc['text_embedding'], model.temperature(), enc['image_id'],
        valid, groups)
    text_hidden, text_mask = enc['text_hidden'], enc['attention_mask']
    image_tokens, image_mask = enc['image_tokens'], enc['image_mask']
    take = lambda x, index: _take_in_groups(x, index, groups)  # noqa: E731
    # Per row i: (text i, image i) match; (text i, its negative image); (its negative text, image i).
    fused = model.fuse(
        _interleave(text_hidden, text_hidden, take(text_hidden, neg_text)),
        _interleave(text_mask, text_mask, take(text_mask, neg_text)),
        _interleave(image_tokens, take(image_tokens, neg_image), image_tokens),
        _interleave(image_mask, take(image_mask, neg_image), image_mask),
        train=enc['train'])
    logits = model.itm_logits(fused)  # [3B', 2]
    ones, zeros = jnp.ones_like(valid, jnp.int32), jnp.zeros_like(valid, jnp.int32)
    labels = _interleave(ones, zeros, zeros)
    negative_ok = valid * has_negative
    weights = _interleave(valid, negative_ok, negative_ok)
    count = jnp.maximum(weights.sum(), 1.0)
    loss = (optax.softmax_cross_entropy_with_integer_labels(logits, labels) * weights).sum() / count
    accuracy = ((jnp.argmax(logits, axis=-1) == labels) * weights).sum() / count
    return loss, {'itm_accuracy': accuracy}
