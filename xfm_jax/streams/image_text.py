"""Image-text stream: one caption per image (or a question and its answer as the caption)."""

from xfm_jax.streams.record import SOURCE_FIELD, Stream, encode_image, text_fields

STREAM = Stream(
    name='image_text',
    fields={
        'image': ('uint8', ('H', 'W', 3)),
        'image_id': ('int32', ()),  # equal ids mark the same image (soft ITC targets)
        'mim_mask': ('bool', ('N',)),
        **text_fields(),
        **SOURCE_FIELD,
    },
    sizes=('text_len',),
    encode_images=encode_image,
    image_id='image_id',
    record='xfm_jax.data.tasks:pair_record',
    augment='xfm_jax.data.augment:image_text_augment',
    finalize='xfm_jax.data.augment:image_text_finalize',
    passthrough=('image', 'image_id'),
    record_features={'image': ('string', 0), 'image_id': ('int32', 0), 'text_ids': ('int32', 1)},
    reads=('image', 'image_key', 'captions'),
    schemas=('image_text',),
    qa_reads=('image', 'image_key', 'qa'),
)
