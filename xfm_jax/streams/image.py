"""Image stream: images alone, for masked image modelling."""

from xfm_jax.streams.record import SOURCE_FIELD, Stream, encode_image

STREAM = Stream(
    name='image',
    fields={
        'image': ('uint8', ('H', 'W', 3)),  # pixels; the vision encoder normalises them
        'mim_mask': ('bool', ('N',)),  # exactly `mim.num_masked` True per row
        **SOURCE_FIELD,
    },
    encode_images=encode_image,
    record='xfm_jax.data.tasks:image_record',
    augment='xfm_jax.data.augment:image_augment',
    finalize='xfm_jax.data.augment:image_finalize',
    passthrough=('image',),
    record_features={'image': ('string', 0)},
    reads=('image', 'image_key'),
    schemas=('image_text',),
)
