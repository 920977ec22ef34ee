"""ITM's negative rules ('pair' as the reference's pre-training, 'image'), and given draws: ITM
negatives and MIM masks passed in instead of drawn, so a run can be replayed exactly."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from xfm_jax.models import layers
from xfm_jax.objectives import itm, mim

DRAWS = 4000


def _draw(v, t, temp, image_id, valid, exclude, groups=1):
    keys = jax.random.split(jax.random.key(0), DRAWS)
    neg_text, neg_image, has_negative = jax.jit(jax.vmap(
        lambda k: itm.sample_negatives(k, v, t, temp, image_id, valid, groups, exclude)))(keys)
    return np.asarray(neg_text), np.asarray(neg_image), np.asarray(has_negative[0])


def test_pair_rule_excludes_only_the_pair_itself():
    # Rows 0, 1 and 2 show the same image; row 4 is padding.
    image_id = np.array([7, 7, 7, 8, 9])
    valid = np.array([1, 1, 1, 1, 0], np.float32)
    rng = np.random.default_rng(1)
    v, t = (x / np.linalg.norm(x, axis=1, keepdims=True)
            for x in rng.standard_normal((2, 5, 4)).astype(np.float32))
    neg_text, neg_image, has_negative = _draw(v, t, 0.5, image_id, valid, 'pair')
    assert has_negative[:4].all()
    sim = v @ t.T / 0.5
    for anchor in range(4):
        allowed = (np.arange(5) != anchor) & (valid > 0)  # same-image rows included
        for drawn, logits in ((neg_text[:, anchor], sim[anchor]),
                              (neg_image[:, anchor], sim[:, anchor])):
            expected = np.where(allowed, np.exp(logits), 0.0)
            np.testing.assert_allclose(np.bincount(drawn, minlength=5) / DRAWS,
                                       expected / expected.sum(), atol=0.03)
    # The project's 'image' rule: rows of image 7 may only draw row 3, the one other image.
    neg_text, neg_image, _ = _draw(v, t, 0.5, image_id, valid, 'image')
    assert (neg_text[:, :3] == 3).all() and (neg_image[:, :3] == 3).all()


@pytest.mark.parametrize('exclude', ['pair', 'image'])
def test_weights_are_floored_at_1e5_as_the_reference(exclude):
    """Anchor 0 matches itself so strongly that every other softmax weight underflows to 0 in
    float32: the reference's +1e-5 then makes the others equally likely. Without the floor the
    draw would follow exp(similarity) among them (e^0 : e^-3 : e^-6, i.e. 95% for row 1)."""
    v = np.array([[1.0, 0.0]] * 4, np.float32)
    t = np.array([[1.0, 0.0], [0.0, 0.0], [-0.03, 0.0], [-0.06, 0.0]], np.float32)
    temp = 0.01  # similarities 100, 0, -3, -6
    neg_text, _, _ = _draw(v, t, temp, np.arange(4), np.ones(4, np.float32), exclude)
    np.testing.assert_allclose(np.bincount(neg_text[:, 0], minlength=4) / DRAWS,
                               [0, 1 / 3, 1 / 3, 1 / 3], atol=0.03)


class _StubModel:
    """fuse -> [text token 0 ; image token 0]; itm_logits -> the first two features."""

    def temperature(self):
        return jnp.float32(0.1)

    def fuse(self, text_hidden, text_mask, image_tokens, image_mask, *, image_rows,
             first_token, train):
        del text_mask, image_mask, first_token, train
        image_tokens = layers.take_rows(image_tokens, image_rows)  # each row's image
        return jnp.concatenate([text_hidden[:, :1], image_tokens[:, :1]], axis=-1)

    def itm_logits(self, fused):
        return fused[:, 0, :2]


def _enc(batch=4):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((2, batch, 3)).astype(np.float32)
    return dict(train=False, valid=np.ones(batch, np.float32), image_id=np.arange(batch),
                text_hidden=rng.standard_normal((batch, 3, 1)).astype(np.float32),
                attention_mask=np.ones((batch, 3), np.int32),
                image_tokens=rng.standard_normal((batch, 2, 1)).astype(np.float32),
                image_index=np.arange(batch, dtype=np.int32),
                image_mask=np.ones((batch, 2), np.int32),
                image_embedding=emb[0], text_embedding=emb[1])


def test_itm_with_given_negatives_by_hand_and_as_a_replay_of_its_own_draw():
    enc = _enc()
    settings = ml_collections.ConfigDict(dict(negative_groups=1, negatives='pair'))
    neg_text, neg_image = np.array([1, 0, 3, 2]), np.array([2, 3, 0, 1])
    loss, _ = itm.itm(_StubModel(), enc, {}, None, settings, negatives=(neg_text, neg_image))

    # By hand: rows (text i, image i) label 1, (text i, image neg_image[i]) and
    # (text neg_text[i], image i) label 0; logits = [text feature, image feature].
    t, im = enc['text_hidden'][:, 0, 0], enc['image_tokens'][:, 0, 0]
    logits = np.concatenate([np.stack([t, im], 1), np.stack([t, im[neg_image]], 1),
                             np.stack([t[neg_text], im], 1)])
    labels = np.array([1] * 4 + [0] * 8)
    log_prob = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(loss, -log_prob[np.arange(12), labels].mean(), rtol=1e-6)

    rng = jax.random.key(3)
    drawn = itm.sample_negatives(rng, enc['image_embedding'], enc['text_embedding'], 0.1,
                                 enc['image_id'], enc['valid'], 1, 'pair')[:2]
    replayed, _ = itm.itm(_StubModel(), enc, {}, None, settings, negatives=drawn)
    sampled, _ = itm.itm(_StubModel(), enc, {}, rng, settings)
    np.testing.assert_allclose(replayed, sampled, rtol=1e-7)
    with pytest.raises(ValueError, match='one index per pair'):
        itm.itm(_StubModel(), enc, {}, None, settings, negatives=(neg_text[:2], neg_image))


def test_mim_uses_a_given_mask_instead_of_the_batch_one():
    class Encoder:  # the masked pass zeroes the masked patches
        def encode_image(self, images, mask, *, train):
            del train
            return images * ~jnp.concatenate([jnp.zeros_like(mask[:, :1]), mask], 1)[..., None]

    images = np.arange(1, 7, dtype=np.float32).reshape(1, 3, 2)  # token 0 and 2 patches
    batch = {'image': images, 'mim_mask': np.array([[True, False]])}
    enc = {'image_tokens': images, 'train': False}
    given = np.array([[False, True]])
    loss, metrics = mim.mim(Encoder(), enc, batch, None, None, mim_mask=given)
    # Patch 2 = (5, 6) is predicted as 0: (25 + 36) / 2; token 0 is unmasked.
    np.testing.assert_allclose([metrics['mim_patch_loss'], metrics['mim_pooled_loss']],
                               [30.5, 0.0])
    np.testing.assert_allclose(loss, 30.5)
