"""Each evaluator on 12 synthetic scenes with a random-init tiny model, sharded over 8 simulated
devices in batches of 8 (so the last batch is padded), against the same quantities computed
directly: one unsharded model.apply over the whole set."""

import os

import jax
import numpy as np
import pytest

from xfm_jax import evaluators, partitioning, streams
from xfm_jax.data import image_ops
from xfm_jax.evaluators import batching, data, gallery, grounding, linear_probe, metrics
from xfm_jax.evaluators import retrieval
from xfm_jax.evaluators import zero_shot_classification
from xfm_jax.models.model import build_model


@pytest.fixture(scope='module')
def ctx(eval_config, random_arrays, tmp_path_factory):
    mesh = partitioning.make_mesh(eval_config.partitioning.mesh)
    rules = partitioning.get_rules(eval_config.partitioning.rules)
    model = build_model(eval_config.model)
    params = random_arrays(*partitioning.param_shardings(model, mesh, rules))
    return batching.EvalContext(model=model, params=params, mesh=mesh, rules=rules,
                                config=eval_config, batch_size=8,
                                workdir=str(tmp_path_factory.mktemp('eval')), step=3)


def _direct(ctx, ds, ids):
    """Unbatched, unsharded: image tokens + embeddings, text hidden + embeddings, text mask."""
    params = jax.device_get(ctx.params)
    mask = (ids != ctx.config.model.text.pad_id).astype(np.int32)

    def encode(m, images, ids, mask):
        tokens, hidden = m.encode_image(images), m.encode_text(ids, mask)
        return tokens, m.image_embedding(tokens), hidden, m.text_embedding(hidden)
    return (params, *jax.jit(lambda p, *a: ctx.model.apply({'params': p}, *a, method=encode))(
        params, np.asarray(ds.images), ids, mask), mask)


def _fusion(ctx, params, hidden, mask, tokens):
    def heads(m, h, k, t):
        fused = m.fuse(h, k, t)
        return jax.nn.softmax(m.itm_logits(fused), -1)[:, 1], m.box_prediction(fused)
    return jax.jit(lambda p, *a: ctx.model.apply({'params': p}, *a, method=heads))(
        params, hidden, mask, tokens)


def test_retrieval_matches_direct_computation(ctx):
    ds = data.load(ctx.config, '', 'validation', 12)
    assert (ds.num_images, len(ds.caption_ids)) == (12, 24)  # two captions per scene
    # k >= the candidate count re-ranks every pair: ITM then orders everything.
    settings = ctx.config.evaluate.retrieval.copy_and_resolve_references()
    settings.k = 24
    out = retrieval.evaluate(ctx, settings)

    params, tokens, image_emb, hidden, text_emb, mask = _direct(ctx, ds, ds.caption_ids)
    similarity = np.asarray(image_emb) @ np.asarray(text_emb).T
    for key, value in metrics.retrieval_recall(similarity, ds.caption_image).items():
        assert out[f'itc/{key}'] == pytest.approx(value), key
    image, text = np.meshgrid(np.arange(12), np.arange(24), indexing='ij')
    match, _ = _fusion(ctx, params, hidden[text.ravel()], mask[text.ravel()],
                       tokens[image.ravel()])
    itm = np.asarray(match).reshape(12, 24)
    for key, value in metrics.retrieval_recall(itm, ds.caption_image).items():
        assert out[f'itm/{key}'] == pytest.approx(value), key
    # Chance by hand: t2i K/12; i2t for 2 of 24 texts: 1 - (24-K)(23-K) / (24 * 23).
    assert out['chance/t2i_r1'] == pytest.approx(100 / 12)
    assert out['chance/i2t_r5'] == pytest.approx(100 * (1 - 19 * 18 / (24 * 23)))
    assert out['num_images'] == 12 and out['num_texts'] == 24
    from PIL import Image
    for name in ('retrieval_gallery', 'retrieval_gallery_i2t'):  # the PNG is what TensorBoard gets
        with Image.open(os.path.join(ctx.workdir, f'{name}_step3.png')) as png:
            np.testing.assert_array_equal(np.asarray(png.convert('RGB')), ctx.images[name])


def _gallery_set(num_images: int, caption_image) -> data.EvalSet:
    """An EvalSet of plain arrays: image i is filled with the value i / 10."""
    images = np.arange(num_images, dtype=np.float32)[:, None, None, None] / 10 * np.ones(
        (1, 4, 4, 3), np.float32)
    caption_image = np.asarray(caption_image)
    return data.EvalSet(images=images, caption_ids=np.zeros((len(caption_image), 2), np.int32),
                        caption_image=caption_image,
                        captions=tuple(f'caption {t}' for t in range(len(caption_image))),
                        phrase_ids=np.zeros((0, 2), np.int32), phrases=(),
                        phrase_image=np.zeros(0, np.int32),
                        phrase_boxes=np.zeros((0, 4), np.float32), labels=None, label_names=())


def test_retrieval_galleries_show_the_right_answer_and_its_rank():
    # 8 images, caption t describes image t. Every query ranks the items by score = -index,
    # so item 0 comes first: the true image of caption 6 is at rank 7 (outside the top 5),
    # that of caption 2 at rank 3; image 7's caption at rank 8, image 1's at rank 2.
    ds = _gallery_set(8, np.arange(8))
    scores = -np.arange(8, dtype=np.float64)
    t2i = np.tile(scores[:, None], (1, 8))  # [N, T]: text queries rank the images
    i2t = np.tile(scores[None, :], (8, 1))  # image queries rank the texts
    rows = retrieval.text_to_image_rows(ds, t2i, num_queries=8)
    assert len(rows) == 8
    row2, row6 = rows[2], rows[6]
    assert row2[0] == gallery.Text('caption 2') and len(row2) == 1 + 5  # truth in the top 5
    assert [cell.frame for cell in row2[1:]] == ['red', 'red', 'green', 'red', 'red']
    assert len(row6) == 1 + 5 + 2 and all(cell.frame == 'red' for cell in row6[1:6])
    assert row6[6] == gallery.Text('true image:\nrank 7', 'green', width=12)
    assert row6[7].frame == 'green'
    np.testing.assert_array_equal(row6[7].pixels, gallery.to_uint8(ds.images[6]))
    rows = retrieval.image_to_text_rows(ds, i2t, num_queries=8)
    assert [cell.colour for cell in rows[1][1:]] == ['red', 'green', 'red', 'red', 'red']
    assert rows[1][2].text == '2. caption 1' and len(rows[1]) == 1 + 5
    assert rows[7][-1] == gallery.Text('8. caption 7', 'green', width=24)
    assert len(rows[7]) == 1 + 5 + 1
    np.testing.assert_array_equal(rows[7][0].pixels, gallery.to_uint8(ds.images[7]))


def test_zero_shot_classification_matches_direct_computation(ctx):
    settings = ctx.config.evaluate.zero_shot_classification
    out = zero_shot_classification.evaluate(ctx, settings)
    ds = data.load(ctx.config, '', 'validation', 12)
    tokenizer = data.Tokenizer(ctx.config.data.vocab, streams.text_length(ctx.config))
    prompts = tokenizer([f'a picture of a {name}' for name in ds.label_names])
    _, _, image_emb, _, text_emb, _ = _direct(ctx, ds, prompts)
    expected = 100 * np.mean(np.argmax(np.asarray(image_emb) @ np.asarray(text_emb).T, 1)
                             == ds.labels)
    assert out['top1'] == pytest.approx(expected)
    assert out['majority_class'] == pytest.approx(100 * np.bincount(ds.labels).max() / 12)
    assert out['num_classes'] == 4  # circle, square, triangle, diamond


def test_grounding_matches_direct_computation(ctx):
    out = grounding.evaluate(ctx, ctx.config.evaluate.grounding)
    ds = data.load(ctx.config, '', 'validation', 12)
    params, tokens, _, hidden, _, mask = _direct(ctx, ds, ds.phrase_ids)
    _, boxes = _fusion(ctx, params, hidden, mask, tokens[ds.phrase_image])
    iou = metrics.box_iou(np.asarray(boxes), ds.phrase_boxes)
    assert out['accuracy'] == pytest.approx(100 * np.mean(iou >= 0.5))
    assert out['mean_iou'] == pytest.approx(iou.mean(), rel=1e-5)
    assert out['num_phrases'] == len(ds.phrase_ids)
    # gallery.draw: gallery_phrases=8 rows of (128-pixel image, 40-character text column),
    # each followed by 4 pixels of padding.
    from PIL import Image
    with Image.open(os.path.join(ctx.workdir, 'grounding_gallery_step3.png')) as png:
        assert png.size == (128 + 4 + 40 * 6 + 4, 8 * (128 + 4))


def test_grounding_gallery_draws_true_and_predicted_boxes(tmp_path):
    from PIL import Image
    images = np.zeros((5, 16, 16, 3), np.float32)  # CLIP-normalised 0: the mean colour
    true = np.tile([0.5, 0.5, 0.5, 0.5], (5, 1))  # pixels 32..96 of a 128-pixel image
    predicted = np.tile([0.25, 0.25, 0.25, 0.25], (5, 1))  # pixels 16..48
    path = str(tmp_path / 'gallery.png')
    gallery.draw(path, grounding.gallery_rows(images, ['a small red circle'] * 5, true,
                                              predicted, 0.5), size=grounding.GALLERY_SIZE)
    with Image.open(path) as png:
        assert png.size == (128 + 4 + 40 * 6 + 4, 5 * (128 + 4))
        pixels = np.asarray(png.convert('RGB')).astype(int)
    y = 4 * 132  # the fifth row; at each box's left edge, half-way down it
    np.testing.assert_array_equal(pixels[y + 80, 32], (0, 128, 0))  # PIL's 'green': the truth
    np.testing.assert_array_equal(pixels[y + 40, 16], (255, 0, 0))  # red: the prediction
    # Inside neither box: the image, the mean colour to the nearest unit.
    np.testing.assert_allclose(pixels[y + 110, 110], 255 * np.asarray(image_ops.CLIP_MEAN),
                               atol=1)
    np.testing.assert_array_equal(pixels[y + 1, 128 + 4 + 40 * 6 + 1], (255, 255, 255))  # pad


def test_logistic_regression_separates_separable_classes():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    features = np.eye(3)[labels] * 2 - 1 + 0.1 * rng.normal(size=(60, 3))  # class c: +1 at c
    weights, bias = linear_probe.fit_logistic_regression(
        features, labels, 3, steps=100, learning_rate=0.1, weight_decay=0.0)
    assert metrics.top1_accuracy(features @ weights + bias, labels) == 100.0


def test_linear_probe_plumbing(ctx):
    out = linear_probe.evaluate(ctx, ctx.config.evaluate.linear_probe)
    assert (out['num_train'], out['num_test']) == (24, 12)
    assert 0 <= out['test_top1'] <= 100 and 0 <= out['train_top1'] <= 100


def test_unknown_source_and_missing_labels_are_named(ctx):
    with pytest.raises(ValueError, match="Unknown evaluation source 'nope'"):
        data.load(ctx.config, 'nope', 'validation')
    with pytest.raises(evaluators.SourceLacks, match="has no split 'test'"):  # skipped
        data.load(ctx.config, '', 'test')
