"""Image-text matching with hard negatives (ITM, docs/design.md §7.3).

Negatives are mined within contiguous groups of the batch (``settings.negative_groups``): the
reference mines in each device's LOCAL batch, so the train step sets the number of batch shards.
Keeping gathers inside a group also keeps them on the device that holds the group.

Which candidates an anchor may draw (``settings.negatives``):
  'pair'   every other valid pair; only the pair itself is excluded. The reference's
           pre-training rule (X-FM and X²-VLM, image-text and region batches alike): a region
           text may draw another region of its own image, which is a true negative for it.
  'image'  every valid pair of ANOTHER image id: no caption of the same image is drawn as a
           negative. Right where an image has several interchangeable captions (the reference's
           retrieval fine-tuning excludes the same image id so).
Both weight a candidate as the reference does: softmax of the similarity over the valid
candidates, plus 1e-5, then zero where excluded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from xfm_jax import flops
from xfm_jax.models import layers
from xfm_jax.objectives.encode import image_rows
from xfm_jax.objectives.itc import similarity
from xfm_jax.objectives.record import Objective, RowLosses, row_mean


def _grouped(x, num_groups: int):
    """[B, ...] -> [G, B/G, ...]."""
    if x.shape[0] % num_groups:
        raise ValueError(f'ITM: batch of {x.shape[0]} pairs is not divisible by '
                         f'itm.negative_groups={num_groups}.')
    return x.reshape(num_groups, x.shape[0] // num_groups, *x.shape[1:])


NEGATIVE_RULES = ('pair', 'image')
_WEIGHT_FLOOR = 1e-5  # the reference adds it to every softmax weight before excluding


def sample_negatives(rng, image_embedding, text_embedding, temperature, image_id, valid,
                     num_groups: int, exclude: str):
    """Draws one hard negative text per image and one hard negative image per text.

    Within each group, image i draws text j with probability proportional to
    softmax_j(v_i . t_j / temp) + 1e-5 over the allowed j (valid, and not excluded by the rule
    ``exclude``, see the module doc); likewise text i draws image j. Similarities are
    stop_gradient'ed: sampling is not differentiated.

    Args:
      image_embedding, text_embedding: [B, E]; image_id [B] int; valid [B] float;
      exclude: one of ``NEGATIVE_RULES``.
    Returns:
      neg_text_for_image [B] int32, neg_image_for_text [B] int32 (batch indices, always inside
      the anchor's group), has_negative [B] bool (false when the group holds no allowed pair;
      that row's index is then meaningless and must be excluded).
    """
    if exclude not in NEGATIVE_RULES:
        raise ValueError(f'objectives.itm.negatives must be one of {NEGATIVE_RULES}, got '
                         f'{exclude!r}.')
    image_embedding = _grouped(jax.lax.stop_gradient(image_embedding), num_groups)
    text_embedding = _grouped(jax.lax.stop_gradient(text_embedding), num_groups)
    logits = jax.vmap(similarity, in_axes=(0, 0, None))(
        image_embedding, text_embedding, jax.lax.stop_gradient(temperature))  # [G, n, n]
    ids, ok = _grouped(image_id, num_groups), _grouped(valid, num_groups) > 0
    # Row = anchor, column = candidate; both rules are symmetric.
    if exclude == 'pair':
        allowed = ~jnp.eye(ids.shape[1], dtype=bool)[None] & ok[:, None, :]
    else:
        allowed = (ids[:, :, None] != ids[:, None, :]) & ok[:, None, :]

    def draw(key, rows):
        weights = jax.nn.softmax(jnp.where(ok[:, None, :], rows, -jnp.inf), axis=-1)
        weights = jnp.where(allowed, weights + _WEIGHT_FLOOR, 0.0)
        return jax.random.categorical(key, jnp.log(weights))

    text_rng, image_rng = jax.random.split(rng)
    neg_text = draw(text_rng, logits)
    neg_image = draw(image_rng, jnp.swapaxes(logits, 1, 2))
    # Group-local indices -> batch indices.
    offset = (jnp.arange(num_groups, dtype=jnp.int32) * ids.shape[1])[:, None]
    return ((neg_text + offset).reshape(-1), (neg_image + offset).reshape(-1),
            allowed.any(axis=-1).reshape(-1))


# Each positive pair is scored against two negatives: its text with a hard negative image, and a
# hard negative text with its image (the three rows :func:`itm` interleaves).
NEGATIVES_PER_POSITIVE = 2


def _interleave(*xs):
    """k arrays [B, ...] -> [B*k, ...] with row i's k entries adjacent, so rows stay on the
    device that holds row i (a concatenation would move data across batch shards)."""
    return jnp.stack(xs, axis=1).reshape(-1, *xs[0].shape[1:])


def itm(model, enc: dict, batch: dict, rng, settings: ml_collections.ConfigDict,
        negatives=None):
    """Binary match CE over B' positives, B' (text, negative image) and B' (negative text, image)
    pairs run through the fusion encoder. Reads the pair view: ``image_tokens``, ``image_index``,
    ``image_mask``, ``region_token`` (region), ``text_hidden``, ``attention_mask``,
    ``image_embedding``, ``text_embedding``, ``image_id``, ``valid``. ``rng`` draws the negatives (``settings.negatives`` says which are allowed).

    ``negatives``: given draws instead, ``(neg_text_for_image, neg_image_for_text)`` [B'] int
    batch indices (each inside its row's group of ``settings.negative_groups``), e.g. to replay
    the draws of another implementation exactly; every row's negatives then count.
    """
    loss, metrics, _ = itm_with_rows(model, enc, batch, rng, settings, negatives)
    return loss, metrics


def itm_with_rows(model, enc: dict, batch: dict, rng, settings: ml_collections.ConfigDict,
                  negatives=None):
    """:func:`itm` and its ``RowLosses``: row i is pair i's three fusion rows (the match and
    its two negatives), their mean CE weighted by how many of them count."""
    del batch  # the pair view holds everything
    groups = settings.negative_groups
    valid = enc['valid']
    if negatives is None:
        neg_text, neg_image, has_negative = sample_negatives(
            rng, enc['image_embedding'], enc['text_embedding'], model.temperature(),
            enc['image_id'], valid, groups, settings.negatives)
    else:
        neg_text, neg_image = (jnp.asarray(n, jnp.int32) for n in negatives)
        if neg_text.shape != valid.shape or neg_image.shape != valid.shape:
            raise ValueError(f'ITM: given negatives {neg_text.shape}, {neg_image.shape} must '
                             f'have one index per pair, {valid.shape}.')
        has_negative = jnp.ones(valid.shape, bool)
    group_size = _grouped(valid, groups).shape[1]
    take = lambda x, index: layers.take_rows(  # noqa: E731
        x, _grouped(index % group_size, groups))
    both = lambda x, index: _interleave(x, take(x, index), x)  # noqa: E731
    text_hidden, text_mask = enc['text_hidden'], enc['attention_mask']
    # Per row i: (text i, image i) match; (text i, its negative image); (its negative text, image i).
    # An image's tokens stay one row: each fusion row names its image (a negative names the
    # image of its pair), so its keys and values are projected once for every row reading it.
    region_token = enc.get('region_token')
    fused = model.fuse(
        _interleave(text_hidden, text_hidden, take(text_hidden, neg_text)),
        _interleave(text_mask, text_mask, take(text_mask, neg_text)),
        enc['image_tokens'], both(enc['image_mask'], neg_image),
        image_rows=image_rows(both(enc['image_index'], neg_image),
                              enc['image_tokens'].shape[0], groups),
        first_token=None if region_token is None else both(region_token, neg_image),
        train=enc['train'])
    logits = model.itm_logits(fused)  # [3B', 2]
    ones, zeros = jnp.ones_like(valid, jnp.int32), jnp.zeros_like(valid, jnp.int32)
    labels = _interleave(ones, zeros, zeros)
    negative_ok = valid * has_negative
    weights = _interleave(valid, negative_ok, negative_ok)
    count = jnp.maximum(weights.sum(), 1.0)
    weighted = optax.softmax_cross_entropy_with_integer_labels(logits, labels) * weights
    loss = weighted.sum() / count
    accuracy = ((jnp.argmax(logits, axis=-1) == labels) * weights).sum() / count
    per_pair = lambda x: x.reshape(-1, 1 + NEGATIVES_PER_POSITIVE).sum(axis=-1)  # noqa: E731
    rows = RowLosses(row_mean(per_pair(weighted), per_pair(weights)), per_pair(weights))
    return loss, {'itm_accuracy': accuracy}, rows


def itm_flops(d: flops.Dims, rows: flops.Rows, settings) -> int:
    """The fusion over every positive and its negatives, the images' keys and values once."""
    del settings
    return rows.fusion(d, passes=1 + NEGATIVES_PER_POSITIVE)


OBJECTIVE = Objective(
    name='itm', loss=itm, with_rows=itm_with_rows, kinds=('pairs',), flops=itm_flops,
    needs=frozenset({'image_tokens', 'image_mask', 'image_embedding', 'text_hidden',
                     'text_embedding'}))
