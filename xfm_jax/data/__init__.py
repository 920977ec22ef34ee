"""Input pipeline: TFDS builders -> seqio tasks and per-stream mixtures -> global jax.Arrays.

Kept import-free: TensorFlow and seqio load only when a submodule is imported, so the model and
train-step modules (which never import this package) stay TF-free. Entry point:
``xfm_jax.data.pipeline.make_streams``.
"""
