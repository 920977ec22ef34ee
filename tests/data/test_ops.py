"""TF image and text ops against PIL / numpy (independent implementations) and hand values."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from xfm_jax.data import image_ops, text_ops, vocab as vocab_lib


def _seed(i):
    return tf.constant([7, i], tf.int64)


@pytest.mark.parametrize('raw,expected', [
    ('A Man, riding a WAVE!! on top-of a surfboard.', 'a man riding a wave on top of a surfboard'),
    ("Don't   stop\tnow", "don't stop now"),
    ('!!! ... ???', ''),
    ('Café DÉJÀ vu', 'café déjà vu'),
])
def test_clean_caption(raw, expected):
    assert text_ops.clean_caption(tf.constant(raw)).numpy().decode() == expected


def test_clean_caption_keeps_30_words():
    long = ' '.join(f'w{i}' for i in range(45))
    out = text_ops.clean_caption(tf.constant([long, 'short one'])).numpy()
    assert out[0].decode() == ' '.join(f'w{i}' for i in range(30))
    assert out[1].decode() == 'short one'


def test_tokenize_wrapped(tmp_path):
    path = vocab_lib.synthetic_vocab_file(['red', 'circle'], str(tmp_path / 'v.txt'),
                                          vocab_size=150, pad_id=0, cls_id=101, sep_id=102,
                                          mask_id=103)
    vocab = vocab_lib.WordPieceVocabulary(path)
    specials = vocab_lib.special_ids(vocab)
    # [UNK]=1, circle=2, red=3.
    out = text_ops.tokenize_wrapped(vocab, specials, tf.constant(['red circle', '',
                                                                  'red red red red red']), 5)
    assert out.numpy().tolist() == [[101, 3, 2, 102, 0], [101, 102, 0, 0, 0],
                                    [101, 3, 3, 3, 102]]


def test_crop_boxes_hand_computed():
    boxes = tf.constant([[10.0, 10.0, 20.0, 20.0], [0.0, 0.0, 10.0, 10.0], [30.0, 5.0, 20.0, 10.0]])
    crop = tf.constant([5.0, 5.0, 45.0, 45.0])  # 40 x 40 crop resized to 80: scale 2
    out, keep = image_ops.crop_boxes(boxes, crop, 80, tf.constant(False))
    # Box 0 inside: (10-5)*2 = 10. Box 1: 25 of 100 px^2 inside -> dropped. Box 2: x 30..45 of
    # 30..50 and y 5..15: 150 of 200 inside (> 50%) -> kept, clipped to w 15 -> 30 output px.
    assert keep.numpy().tolist() == [True, False, True]
    np.testing.assert_allclose(out.numpy()[[0, 2]], [[10, 10, 40, 40], [50, 0, 30, 20]])
    flipped, _ = image_ops.crop_boxes(boxes, crop, 80, tf.constant(True))
    np.testing.assert_allclose(flipped.numpy()[0], [80 - 10 - 40, 10, 40, 40])


def test_crop_around_box_contains_box():
    box = tf.constant([13.3, 20.7, 30.0, 11.1])
    for i in range(50):
        x0, y0, x1, y1 = image_ops.crop_around_box(tf.constant(60), tf.constant(80), box,
                                                   _seed(i)).numpy()
        assert 0 <= x0 <= 13 and 0 <= y0 <= 20 and 44 <= x1 <= 80 and 32 <= y1 <= 60


def _random_image(seed, size=(24, 20)):
    rng = np.random.default_rng(seed)
    return rng.integers(30, 200, (*size, 3)).astype(np.uint8)


def test_equalize_and_autocontrast_match_pil():
    for seed in range(5):
        image = _random_image(seed)
        ours = image_ops.equalize(tf.constant(image, tf.float32)).numpy()
        np.testing.assert_array_equal(ours, np.asarray(ImageOps.equalize(Image.fromarray(image))))
        ours = image_ops.autocontrast(tf.constant(image, tf.float32)).numpy()
        theirs = np.asarray(ImageOps.autocontrast(Image.fromarray(image)), np.float32)
        assert np.abs(ours - theirs).max() < 1.01  # PIL truncates through a uint8 lookup table


def test_sharpness_and_brightness_match_pil():
    for seed in range(3):
        image = _random_image(seed)
        for factor in (0.1, 1.36, 1.9):
            ours = image_ops.sharpness(tf.constant(image, tf.float32), factor).numpy()
            theirs = np.asarray(ImageEnhance.Sharpness(Image.fromarray(image)).enhance(factor))
            assert np.abs(ours - theirs).max() < 1.01  # PIL rounds the blend to uint8
            ours = image_ops.brightness(tf.constant(image, tf.float32), factor).numpy()
            theirs = np.asarray(ImageEnhance.Brightness(Image.fromarray(image)).enhance(factor))
            assert np.abs(ours - theirs).max() < 1.01


def _numpy_affine(image, matrix, fill=128.0):
    """Bilinear sampling of output (x, y) at (a0 x + a1 y + a2, b0 x + b1 y + b2); the four taps
    outside the image read ``fill`` (cv2.warpAffine with a constant border)."""
    h, w, _ = image.shape
    a0, a1, a2, b0, b1, b2 = matrix
    out = np.zeros(image.shape, np.float64)
    for y in range(h):
        for x in range(w):
            sx, sy = a0 * x + a1 * y + a2, b0 * x + b1 * y + b2
            x0, y0 = int(np.floor(sx)), int(np.floor(sy))
            for yy, wy in ((y0, y0 + 1 - sy), (y0 + 1, sy - y0)):
                for xx, wx in ((x0, x0 + 1 - sx), (x0 + 1, sx - x0)):
                    inside = 0 <= yy < h and 0 <= xx < w
                    out[y, x] += wy * wx * (image[yy, xx] if inside else fill)
    return out


@pytest.mark.parametrize('name,make_matrix,fast', [
    ('shear_x', lambda s: (1, s, 0, 0, 1, 0), lambda x, s: image_ops.shear_x(x, s)),
    ('shear_y', lambda s: (1, 0, 0, s, 1, 0), lambda x, s: image_ops.shear_y(x, s)),
])
def test_shears_match_numpy_bilinear(name, make_matrix, fast):
    image = _random_image(3, (11, 13)).astype(np.float32)
    for factor in (0.21, -0.21, 0.7):
        expected = _numpy_affine(image, make_matrix(factor))
        np.testing.assert_allclose(fast(tf.constant(image), tf.constant(factor)).numpy(),
                                   expected, atol=0.02, err_msg=f'{name} {factor}')
        general = image_ops._affine(tf.constant(image), tf.constant(make_matrix(factor),
                                                                     tf.float32))
        np.testing.assert_allclose(general.numpy(), expected, atol=0.02)


def test_translate_equals_general_affine_exactly():
    image = _random_image(4, (10, 12)).astype(np.float32)
    for dx, dy in ((7, 0), (-7, 0), (0, 7), (0, -7), (3, -2), (-12, 0)):
        fast = image_ops.translate(tf.constant(image), tf.constant(float(dx)), dy, 12).numpy()
        general = image_ops._affine(tf.constant(image), tf.constant([1, 0, dx, 0, 1, dy],
                                                                     tf.float32)).numpy()
        np.testing.assert_array_equal(fast, general)
        np.testing.assert_allclose(fast, _numpy_affine(image, (1, 0, dx, 0, 1, dy)), atol=1e-4)


def test_rotate_90_matches_numpy():
    image = _random_image(0, (9, 9)).astype(np.float32)
    out = image_ops.rotate(tf.constant(image), tf.constant(90.0)).numpy()
    np.testing.assert_allclose(out, np.rot90(image, 1), atol=1e-3)  # counter-clockwise


def test_random_resized_crop_and_randaugment_deterministic():
    buffer = io.BytesIO()
    Image.fromarray(_random_image(1, (50, 70))).save(buffer, format='JPEG')
    encoded = tf.constant(buffer.getvalue())
    a = image_ops.random_resized_crop(encoded, 32, _seed(0))
    b = image_ops.random_resized_crop(encoded, 32, _seed(0))
    assert a.shape == (32, 32, 3) and np.array_equal(a.numpy(), b.numpy())
    outs = [image_ops.randaugment(a, _seed(i)).numpy() for i in (1, 1, 2)]
    assert np.array_equal(outs[0], outs[1])
    for out in outs:
        assert out.shape == (32, 32, 3) and 0 <= out.min() and out.max() <= 255


def test_crop_window_within_image_and_scale():
    for i in range(30):
        top, left, h, w = image_ops.crop_window(tf.constant(100), tf.constant(150), _seed(i)).numpy()
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 150
        assert 0.2 * 15000 * 0.9 <= h * w <= 15000


def test_normalize_clip_statistics():
    mean_pixel = tf.constant(np.array(image_ops.CLIP_MEAN, np.float32) * 255)[None, None]
    np.testing.assert_allclose(image_ops.normalize(mean_pixel).numpy(), 0, atol=1e-5)
    white = image_ops.normalize(tf.fill([1, 1, 3], 255.0)).numpy()[0, 0]
    np.testing.assert_allclose(white, (1 - np.array(image_ops.CLIP_MEAN))
                               / np.array(image_ops.CLIP_STD), rtol=1e-5)


@pytest.mark.parametrize('rate', [0.0, 0.5, 1.0])
def test_region_caption_rate(rate):
    """``data.streams.region.caption_rate``: the share of region images whose first text is a
    whole-image caption (its box the whole image, box_valid 0) instead of a phrase."""
    import ml_collections
    from xfm_jax.data import augment
    config = ml_collections.ConfigDict(dict(
        image_size=32, randaugment=dict(num_ops=1, magnitude=5, region_ops=('Identity',)),
        streams=dict(region=dict(region_texts=3, text_len=4, caption_rate=rate))))
    buffer = io.BytesIO()
    Image.new('RGB', (48, 48), (120, 120, 120)).save(buffer, 'JPEG')
    ex = {'image': tf.constant(buffer.getvalue()), 'image_id': tf.constant(0, tf.int64),
          'boxes': tf.constant([[4, 4, 12, 12], [24, 24, 16, 16]], tf.float32),
          'phrase_ids': tf.constant([[5, 6, 0, 0], [7, 8, 0, 0]], tf.int32),
          'caption_ids': tf.constant([[9, 9, 9, 0]], tf.int32)}
    firsts = [augment.region_augment(ex, _seed(i), config, pad_id=0) for i in range(200)]
    captioned = np.array([f['box_valid'].numpy()[0] == 0 for f in firsts])
    for f, caption in zip(firsts, captioned):
        assert (f['region_ids'].numpy()[0, 0] == 9) == caption
    # 200 draws: a binomial's 4.5 standard deviations at 0.5 is 0.16.
    assert abs(captioned.mean() - rate) <= (0.16 if 0 < rate < 1 else 0.0)


def test_uint8_batches_normalised_on_device_equal_the_pipeline_normalisation():
    """Training batches carry uint8 pixels; the vision encoder's ``normalize_pixels`` computes
    what ``image_ops.normalize`` gave the encoder before, and the encoder's output is the same."""
    import jax
    from configs import xfm_base
    from xfm_jax.models.model import build_model
    from xfm_jax.models.vision import VisionTransformer, normalize_pixels
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    on_host = image_ops.normalize(tf.constant(pixels, tf.float32)).numpy()
    np.testing.assert_allclose(np.asarray(normalize_pixels(pixels)), on_host, rtol=0, atol=1e-6)
    float_rounded = image_ops.to_uint8(tf.constant([[-3.0, 0.4, 0.6, 254.5, 300.0]])).numpy()
    np.testing.assert_array_equal(float_rounded, [[0, 0, 1, 254, 255]])  # half to even
    encoder = VisionTransformer(build_model(xfm_base.get_config('tiny').model).vision)
    params = encoder.init(jax.random.key(0), on_host)
    np.testing.assert_allclose(encoder.apply(params, pixels), encoder.apply(params, on_host),
                               rtol=1e-5, atol=1e-5)
