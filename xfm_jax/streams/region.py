"""Region stream: K texts per image, each about one box (or the whole image)."""

from xfm_jax.streams.record import SOURCE_FIELD, Stream, encode_image, text_fields


def region_keys(model, image_tokens, batch) -> dict:
    """Each region text reads its box's patches behind a region token of its own (the masked
    mean of those patches), which takes token 0's place."""
    region_token, image_mask = model.region(image_tokens, batch['patch_mask'])
    return {'region_token': region_token, 'image_mask': image_mask}


STREAM = Stream(
    name='region',
    fields={
        'image': ('uint8', ('H', 'W', 3)),
        'image_id': ('int32', ()),
        **text_fields('K'),
        'patch_mask': ('bool', ('K', 'N')),  # patches covered by the box
        'box': ('float32', ('K', 4)),  # normalised (cx, cy, w, h)
        'box_valid': ('float32', ('K',)),  # 0 for whole-image captions and padding texts
        'text_valid': ('float32', ('K',)),  # 0 for padding texts
        **SOURCE_FIELD,
    },
    sizes=('text_len', 'region_texts'),
    encode_images=encode_image,
    image_id='image_id',
    pair_fields=('box', 'box_valid'),
    pair_keys=region_keys,
    pair_tokens=1,
    record='xfm_jax.data.tasks:region_record',
    augment='xfm_jax.data.augment:region_augment',
    finalize='xfm_jax.data.augment:region_finalize',
    passthrough=('image', 'image_id', 'box_valid', 'text_valid'),
    record_features={'image': ('string', 0), 'image_id': ('int32', 0),
                     'caption_ids': ('int32', 2), 'boxes': ('float32', 2),
                     'phrase_ids': ('int32', 2)},
    reads=('image', 'image_key', 'captions', 'objects'),
    schemas=('image_text',),
    source_flag='regions',
)
