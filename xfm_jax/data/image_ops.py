"""Image augmentation in TensorFlow (runs inside tf.data, in parallel, with stateless seeds).

Every random op takes ``seed``: an int32/int64 [2] tensor derived from (run seed, example index),
so an example is augmented identically whatever the batching, host count or resume point.
Pixel values stay in [0, 255] until ``normalize``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import tensorflow as tf

from xfm_jax.data import CLIP_MEAN, CLIP_STD, PIXEL_OFFSET, PIXEL_SCALE
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


@functools.lru_cache(maxsize=None)
def _per_channel_constant(values: tuple, shape: tuple | None, dtype: str) -> np.ndarray:
    array = np.array(values, dtype)
    return array if shape is None else np.broadcast_to(array, shape).copy()


def _channel_constant(values, image: tf.Tensor, dtype: str = 'float32') -> np.ndarray:
    """Per-channel ``values`` [3] laid out on the image's full static shape (when known).

    TF's CPU kernels broadcast a trailing [3] operand about half as fast as they read a
    same-shape one; this matters for the ops that touch every pixel of every example.
    """
    shape = tuple(image.shape) if image.shape.is_fully_defined() else None
    return _per_channel_constant(tuple(float(v) for v in values), shape, dtype)


def normalize(image: tf.Tensor) -> tf.Tensor:
    """[0, 255] pixels [..., 3] -> CLIP-normalised float32: (x / 255 - mean) / std, computed as
    one multiply-add."""
    return image * _channel_constant(PIXEL_SCALE, image) + _channel_constant(PIXEL_OFFSET, image)


def to_uint8(image: tf.Tensor) -> tf.Tensor:
    """[0, 255] float pixels -> uint8, rounded (as a PIL image holds them). Training batches
    carry these: a quarter of float32's bytes through the host pipeline and onto the device,
    where the vision encoder normalises them (``models.vision.normalize_pixels``)."""
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


# --- RandAugment --------------------------------------------------------------------------------
# Magnitudes follow the reference's RandomAugment(2, 7) (max level 10): enhance factor
# (M/10)*1.8+0.1, shear 0.3*M/10, translate M px, rotate 30*M/10 degrees; signs random; each of the
# two sampled ops is applied with probability 0.5.

def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: float) -> tf.Tensor:
    return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0)


def brightness(image: tf.Tensor, factor: float) -> tf.Tensor:
    """PIL's Brightness: blend with black, i.e. ``factor * image`` clipped to [0, 255]."""
    return tf.clip_by_value(image * factor, 0.0, 255.0)


def _per_channel(image: tf.Tensor, reduce) -> tf.Tensor:
    # Three whole-channel reductions beat one reduction over axes [0, 1] of [H, W, 3].
    return tf.stack([reduce(channel) for channel in tf.unstack(image, 3, axis=-1)])


def autocontrast(image: tf.Tensor) -> tf.Tensor:
    """Per channel, stretch [min, max] to [0, 255] (channels with max == min are unchanged)."""
    lo, hi = _per_channel(image, tf.reduce_min), _per_channel(image, tf.reduce_max)
    scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1e-6), 1.0)
    offset = tf.where(hi > lo, -lo * scale, 0.0)
    shape = tf.shape(image)
    return image * tf.broadcast_to(scale, shape) + tf.broadcast_to(offset, shape)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """PIL's ImageOps.equalize per channel of uint8-valued float [H, W, 3].

    One histogram of (channel * 256 + value) serves all three channels: a single bincount and a
    single gather instead of one per channel (the op was the slowest of RandAugment's).
    """
    values = tf.cast(image, tf.int32) + _channel_constant((0, 256, 512), image, 'int32')
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
    """PIL's Sharpness: blend with the image smoothed by [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13
    (border pixels kept as is).

    The 3x3 sum comes from an average pool (faster than a depthwise convolution on CPU).
    """
    interior = image[1:-1, 1:-1]
    box_sum = tf.nn.avg_pool2d(image[None], 3, 1, 'VALID')[0] * 9.0
    smooth = tf.round((box_sum + 4.0 * interior) / 13.0)
    sharpened = _blend(smooth, interior, factor)
    # Padding the change (not the result) keeps the border exact; the interior is rounded once
    # more (<= 1 ulp), cheaper than a select over the whole image.
    return tf.pad(sharpened - interior, [[1, 1], [1, 1], [0, 0]]) + image


def _affine(image: tf.Tensor, matrix: tf.Tensor) -> tf.Tensor:
    """Output pixel (x, y) samples input at (a0 x + a1 y + a2, b0 x + b1 y + b2): bilinear, grey
    outside (a border pixel blends with the grey), like the reference's cv2.warpAffine."""
    transform = tf.concat([tf.reshape(matrix, [6]), tf.zeros([2])], 0)[None]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform, output_shape=tf.shape(image)[:2],
        fill_value=_FILL, interpolation='BILINEAR', fill_mode='CONSTANT')
    return out[0]


def shear_x(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Output pixel (x, y) samples input at (x + factor * y, y); equals ``_affine`` with matrix
    (1, factor, 0, 0, 1, 0) up to float rounding of the sample positions.

    Every output row is the input row shifted by a constant, so one ``crop_and_resize`` box per
    row (bilinear along x only) does it at less than half the cost of the general transform. A
    one-pixel grey margin makes border pixels blend with the fill exactly as ``_affine`` does.
    """
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    padded = tf.pad(image, [[0, 0], [1, 1], [0, 0]], constant_values=_FILL)
    y = tf.range(height)
    left = (factor * y + 1.0) / (width + 1)  # normalised x of output column 0 in ``padded``
    row = y / tf.maximum(height - 1, 1.0)
    boxes = tf.stack([row, left, row, left + (width - 1) / (width + 1)], 1)
    out = tf.image.crop_and_resize(padded[None], boxes, tf.zeros(shape[:1], tf.int32),
                                   tf.stack([1, shape[1]]), extrapolation_value=_FILL)
    out = tf.reshape(out, shape)
    out.set_shape(image.shape)
    return out


def shear_y(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Output pixel (x, y) samples input at (x, y + factor * x) (``shear_x`` of the transpose)."""
    return tf.transpose(shear_x(tf.transpose(image, [1, 0, 2]), factor), [1, 0, 2])


def translate(image: tf.Tensor, dx: tf.Tensor, dy: tf.Tensor, max_shift: int) -> tf.Tensor:
    """Output pixel (x, y) = input (x + dx, y + dy), grey outside; integer |dx|, |dy| <= max_shift.

    Equals ``_affine`` with matrix (1, 0, dx, 0, 1, dy) (bilinear sampling at integer offsets is a
    copy), as a pad and a slice: a tenth of the cost of the general transform.
    """
    padded = tf.pad(image, [[max_shift, max_shift], [max_shift, max_shift], [0, 0]],
                    constant_values=_FILL)
    begin = tf.stack([max_shift + tf.cast(dy, tf.int32), max_shift + tf.cast(dx, tf.int32), 0])
    out = tf.slice(padded, begin, tf.shape(image))
    out.set_shape(image.shape)
    return out


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
        'Brightness': lambda x, s: brightness(x, enhance),
        'Sharpness': lambda x, s: sharpness(x, enhance),
        'ShearX': lambda x, s: shear_x(x, s * 0.3 * level),
        'ShearY': lambda x, s: shear_y(x, s * 0.3 * level),
        'TranslateX': lambda x, s: translate(x, s * magnitude, 0, magnitude),
        'TranslateY': lambda x, s: translate(x, 0, s * magnitude, magnitude),
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
