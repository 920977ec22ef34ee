"""Image augmentation in TensorFlow (runs inside tf.data, in parallel, with stateless seeds).

Every random op takes ``seed``: an int32/int64 [2] tensor derived from (run seed, example index),
so an example is augmented identically whatever the batching, host count or resume point.
Pixel values stay in [0, 255] until ``normalize``.
"""

from __future__ import annotations

import math

import tensorflow as tf

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RANDAUG_OPS = ('Identity', 'AutoContrast', 'Equalize', 'Brightness', 'Sharpness',
               'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate')
_FILL = 128.0  # grey fill for pixels that affine ops move in from outside (as the reference)


def fold(seed: tf.Tensor, salt: int) -> tf.Tensor:
    """A new independent stateless seed [2] from ``seed`` and a constant salt."""
    return tf.random.experimental.stateless_fold_in(seed, salt)


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes -> uint8 [h, w, 3] (grey and alpha images become RGB)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def crop_window(height: tf.Tensor, width: tf.Tensor, seed: tf.Tensor,
                scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), attempts: int = 10) -> tf.Tensor:
    """RandomResizedCrop's window (torchvision's algorithm): int32 [4] = (top, left, h, w).

    Up to ``attempts`` (area, log-aspect) draws; the first that fits is used, else a centre crop
    with the aspect clamped into ``ratio``.
    """
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = h_f * w_f * tf.random.stateless_uniform([attempts], fold(seed, 0), *scale)
    aspect = tf.exp(tf.random.stateless_uniform(
        [attempts], fold(seed, 1), math.log(ratio[0]), math.log(ratio[1])))
    crop_w = tf.round(tf.sqrt(area * aspect))
    crop_h = tf.round(tf.sqrt(area / aspect))
    fits = (crop_w > 0) & (crop_w <= w_f) & (crop_h > 0) & (crop_h <= h_f)
    first = tf.argmax(tf.cast(fits, tf.int32))
    u = tf.random.stateless_uniform([2], fold(seed, 2))

    def random_window():
        ch, cw = crop_h[first], crop_w[first]
        top = tf.floor(u[0] * (h_f - ch + 1))
        left = tf.floor(u[1] * (w_f - cw + 1))
        return tf.cast(tf.stack([top, left, ch, cw]), tf.int32)

    def centre_window():
        in_ratio = w_f / h_f
        cw = tf.where(in_ratio < ratio[0], w_f, tf.where(in_ratio > ratio[1],
                                                         tf.round(h_f * ratio[1]), w_f))
        ch = tf.where(in_ratio < ratio[0], tf.round(w_f / ratio[0]), h_f)
        return tf.cast(tf.stack([(h_f - ch) // 2, (w_f - cw) // 2, ch, cw]), tf.int32)

    return tf.cond(tf.reduce_any(fits), random_window, centre_window)


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """Bicubic resize to [size, size, 3] float32, clipped back into [0, 255]."""
    out = tf.image.resize(tf.cast(image, tf.float32), [size, size], method='bicubic')
    return tf.clip_by_value(out, 0.0, 255.0)


def random_resized_crop(encoded: tf.Tensor, size: int, seed: tf.Tensor,
                        scale=(0.2, 1.0)) -> tf.Tensor:
    """Decode + RandomResizedCrop(size, scale, bicubic) -> float32 [size, size, 3] in [0, 255].

    JPEGs are decoded only inside the window (``decode_and_crop_jpeg``), which is most of the
    input pipeline's savings at 224 px.
    """
    def jpeg():
        shape = tf.image.extract_jpeg_shape(encoded)
        window = crop_window(shape[0], shape[1], seed, scale)
        return tf.image.decode_and_crop_jpeg(encoded, window, channels=3)

    def other():
        image = decode_rgb(encoded)
        shape = tf.shape(image)
        top, left, h, w = tf.unstack(crop_window(shape[0], shape[1], seed, scale))
        return image[top:top + h, left:left + w]

    crop = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    crop.set_shape([None, None, 3])
    return resize(crop, size)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Horizontal flip with probability 0.5 of [..., H, W, C]; returns (image, flipped bool)."""
    flipped = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(flipped, lambda: tf.reverse(image, [-2]), lambda: image), flipped


def normalize(image: tf.Tensor) -> tf.Tensor:
    """[0, 255] pixels -> CLIP-normalised float32."""
    return (image / 255.0 - tf.constant(CLIP_MEAN)) / tf.constant(CLIP_STD)


# --- RandAugment --------------------------------------------------------------------------------
# Magnitudes follow the reference's RandomAugment(2, 7) (max level 10): enhance factor
# (M/10)*1.8+0.1, shear 0.3*M/10, translate M px, rotate 30*M/10 degrees; signs random; each of the
# two sampled ops is applied with probability 0.5.

def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: float) -> tf.Tensor:
    return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0)


def autocontrast(image: tf.Tensor) -> tf.Tensor:
    """Per channel, stretch [min, max] to [0, 255] (channels with max == min are unchanged)."""
    lo = tf.reduce_min(image, axis=[0, 1], keepdims=True)
    hi = tf.reduce_max(image, axis=[0, 1], keepdims=True)
    stretched = (image - lo) * (255.0 / tf.maximum(hi - lo, 1e-6))
    return tf.where(hi > lo, stretched, image)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """PIL's ImageOps.equalize per channel of uint8-valued float [H, W, 3].

    One histogram of (channel * 256 + value) serves all three channels: a single bincount and a
    single gather instead of one per channel (the op was the slowest of RandAugment's).
    """
    values = tf.cast(image, tf.int32) + tf.range(3) * 256
    hist = tf.reshape(tf.math.bincount(tf.reshape(values, [-1]), minlength=768, maxlength=768),
                      [3, 256])
    # PIL: step = (pixels - count of the last non-zero bin) // 255; lut = (cumsum + step // 2) // step.
    last_bin = 255 - tf.argmax(tf.reverse(tf.cast(hist > 0, tf.int32), [1]), axis=1,
                               output_type=tf.int32)
    last_count = tf.gather(hist, last_bin, batch_dims=1)
    step = (tf.reduce_sum(hist, axis=1) - last_count) // 255
    lut = (tf.cumsum(hist, axis=1, exclusive=True) + step[:, None] // 2) // tf.maximum(
        step[:, None], 1)
    lut = tf.where(step[:, None] > 0, tf.clip_by_value(lut, 0, 255), tf.range(256)[None])
    return tf.cast(tf.gather(tf.reshape(lut, [-1]), values), tf.float32)


def sharpness(image: tf.Tensor, factor: float) -> tf.Tensor:
    """PIL's Sharpness: blend with a 3x3 smoothed image (border pixels kept as is)."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], 'VALID')[0]
    smooth = tf.round(smooth)
    degenerate = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    interior = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
    degenerate = tf.where(interior > 0, degenerate, image)
    return _blend(degenerate, image, factor)


def _affine(image: tf.Tensor, matrix: tf.Tensor) -> tf.Tensor:
    """Output pixel (x, y) samples input at (a0 x + a1 y + a2, b0 x + b1 y + b2)."""
    transform = tf.concat([tf.reshape(matrix, [6]), tf.zeros([2])], 0)[None]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform, output_shape=tf.shape(image)[:2],
        fill_value=_FILL, interpolation='BILINEAR', fill_mode='CONSTANT')
    return out[0]


def rotate(image: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
    """Counter-clockwise rotation about the image centre."""
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    cy, cx = (size[0] - 1) / 2, (size[1] - 1) / 2
    angle = degrees * math.pi / 180
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Inverse map: input = R(-angle) (output - centre) + centre, with y pointing down.
    return _affine(image, tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                                    sin, cos, cy - sin * cx - cos * cy]))


def randaugment(image: tf.Tensor, seed: tf.Tensor, num_ops: int = 2, magnitude: int = 7,
                ops=RANDAUG_OPS) -> tf.Tensor:
    """RandAugment(num_ops, magnitude) over ``ops`` on float [H, W, 3] pixels in [0, 255]."""
    level = magnitude / 10
    enhance = level * 1.8 + 0.1
    branches = {
        'Identity': lambda x, s: x,
        'AutoContrast': lambda x, s: autocontrast(x),
        'Equalize': lambda x, s: equalize(x),
        'Brightness': lambda x, s: _blend(tf.zeros_like(x), x, enhance),
        'Sharpness': lambda x, s: sharpness(x, enhance),
        'ShearX': lambda x, s: _affine(x, tf.stack([1., s * 0.3 * level, 0., 0., 1., 0.])),
        'ShearY': lambda x, s: _affine(x, tf.stack([1., 0., 0., s * 0.3 * level, 1., 0.])),
        'TranslateX': lambda x, s: _affine(x, tf.stack([1., 0., s * magnitude, 0., 1., 0.])),
        'TranslateY': lambda x, s: _affine(x, tf.stack([1., 0., 0., 0., 1., s * magnitude])),
        'Rotate': lambda x, s: rotate(x, s * 30 * level),
    }
    unknown = set(ops) - set(branches)
    if unknown:
        raise ValueError(f'Unknown RandAugment ops {sorted(unknown)}; known: {list(branches)}.')
    fns = [branches[name] for name in ops]
    for i in range(num_ops):
        op_seed = fold(seed, i)
        which = tf.random.stateless_uniform([], fold(op_seed, 0), 0, len(fns), tf.int32)
        apply = tf.random.stateless_uniform([], fold(op_seed, 1)) < 0.5
        sign = tf.where(tf.random.stateless_uniform([], fold(op_seed, 2)) < 0.5, -1.0, 1.0)
        branch_fns = [lambda f=f, x=image, s=sign: f(x, s) for f in fns]
        shape = image.shape
        image = tf.cond(apply, lambda fs=branch_fns, w=which: tf.switch_case(w, fs),
                        lambda x=image: x)
        image.set_shape(shape)
    return image


# --- Regions ------------------------------------------------------------------------------------

def crop_boxes(boxes: tf.Tensor, crop: tf.Tensor, size: int, flip: tf.Tensor,
               min_kept: float = 0.5) -> tuple[tf.Tensor, tf.Tensor]:
    """Moves pixel boxes into a crop that is resized to ``size`` x ``size`` (and maybe flipped).

    Args:
      boxes: float32 [M, 4] (x, y, w, h) in source pixels.
      crop: float32 [4] (x0, y0, x1, y1) crop corners in source pixels.
      flip: bool scalar, horizontal flip after the resize.
      min_kept: a box survives when more than this fraction of its area lies inside the crop.
    Returns:
      boxes float32 [M, 4] (x, y, w, h) clipped to the crop, in output pixels; keep bool [M].
    """
    x, y, w, h = tf.unstack(boxes, axis=-1)
    x0, y0, x1, y1 = tf.unstack(crop)
    ix0, iy0 = tf.maximum(x, x0), tf.maximum(y, y0)
    ix1, iy1 = tf.minimum(x + w, x1), tf.minimum(y + h, y1)
    iw, ih = tf.maximum(ix1 - ix0, 0.0), tf.maximum(iy1 - iy0, 0.0)
    keep = (w > 0) & (h > 0) & (iw * ih > min_kept * w * h)
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    out_x, out_w = (ix0 - x0) * sx, iw * sx
    out_x = tf.where(flip, size - out_x - out_w, out_x)
    return tf.stack([out_x, (iy0 - y0) * sy, out_w, ih * sy], -1), keep


def crop_around_box(height: tf.Tensor, width: tf.Tensor, box: tf.Tensor,
                    seed: tf.Tensor) -> tf.Tensor:
    """A random integer crop (x0, y0, x1, y1) float32 [4] that contains ``box`` (x, y, w, h).

    Each corner is uniform between the image border and the box's (outward-rounded) edge.
    """
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    x, y, w, h = tf.unstack(box)
    bx0 = tf.clip_by_value(tf.floor(x), 0.0, w_f - 1)
    by0 = tf.clip_by_value(tf.floor(y), 0.0, h_f - 1)
    bx1 = tf.clip_by_value(tf.math.ceil(x + w), bx0 + 1, w_f)
    by1 = tf.clip_by_value(tf.math.ceil(y + h), by0 + 1, h_f)
    u = tf.random.stateless_uniform([4], seed)
    x0 = tf.floor(u[0] * (bx0 + 1))
    y0 = tf.floor(u[1] * (by0 + 1))
    x1 = bx1 + tf.floor(u[2] * (w_f - bx1 + 1))
    y1 = by1 + tf.floor(u[3] * (h_f - by1 + 1))
    return tf.stack([x0, y0, x1, y1])
