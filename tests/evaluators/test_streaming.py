"""Evaluation sets stream their images from disk: an ImageTable decodes exactly the rows asked
for, in the order asked, as the stored-order reader decodes them, and holds no image itself."""

import io

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from xfm_jax.data import image_ops, tasks
from xfm_jax.evaluators import data


def test_image_table_reads_the_rows_asked_for(eval_config):
    ds = data.load(eval_config, '', 'validation', 12)
    table, size = ds.images, eval_config.model.vision.image_size
    assert table.shape == (12, size, size, 3) and len(table) == ds.num_images == 12
    assert not any(isinstance(v, np.ndarray) and v.ndim == 4 for v in vars(table).values())
    source = tasks.SOURCES['xfm_synthetic_scenes']
    builder = tasks.load_builder(source, eval_config.data.tfds_data_dir)
    # Independent decode: PIL reads the stored JPEG bytes of records 0..11 in stored order.
    stored = builder.as_data_source('validation', decoders={'image': tfds.decode.SkipDecoding()})
    expected = np.stack([
        image_ops.normalize(image_ops.resize(tf.constant(np.asarray(
            Image.open(io.BytesIO(stored[i]['image'])).convert('RGB'))), size)).numpy()
        for i in (3, 0, 3, 11)])
    got = table[np.array([3, 0, 3, 11])]
    # PIL and TF decode JPEG a few levels (of 255) apart on edge pixels: compare per image.
    error = np.abs(got - expected).mean(axis=(1, 2, 3))
    assert (error < 0.03).all(), error
    # Another scene is much further off: the rows come in the order asked.
    assert np.abs(got[0] - expected[1]).mean() > 3 * error.max()
    np.testing.assert_array_equal(table[5], table[np.array([[5]])][0, 0])
    assert table[np.array([], int)].shape == (0, size, size, 3)
