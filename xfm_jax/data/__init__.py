"""Input pipeline: TFDS builders -> seqio tasks and per-stream mixtures -> global jax.Arrays.

Kept import-free: TensorFlow and seqio load only when a submodule is imported, so the model and
train-step modules (which never import this package) stay TF-free. Entry point:
``xfm_jax.data.pipeline.make_streams``.
"""

# The pixel normalisation every image gets (CLIP's per-channel mean and std of [0, 1] pixels).
# Here rather than in image_ops so that the Python API's numpy transform reads it TF-free.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The same as one multiply-add on [0, 255] pixels: x * PIXEL_SCALE + PIXEL_OFFSET per channel
# (the training pipeline's TensorFlow ops, the evaluators', the Python API's numpy transform and
# the vision encoder, which normalises the uint8 pixels of training batches on the device).
PIXEL_SCALE = tuple(1 / (255 * s) for s in CLIP_STD)
PIXEL_OFFSET = tuple(-m / s for m, s in zip(CLIP_MEAN, CLIP_STD))
