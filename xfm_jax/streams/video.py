"""Video stream: F frames per clip with one caption; the frames pool into one set of tokens."""

from xfm_jax.streams.record import SOURCE_FIELD, Stream, text_fields


def encode_frames(model, batch, *, train: bool):
    """[B, F, H, W, 3] frames -> [B, 1+N, Dv] frame-pooled tokens."""
    return model.encode_video(batch['frames'], train=train)


STREAM = Stream(
    name='video',
    fields={
        'frames': ('uint8', ('F', 'H', 'W', 3)),
        'video_id': ('int32', ()),
        **text_fields(),
        **SOURCE_FIELD,
    },
    sizes=('text_len', 'frames'),
    encode_images=encode_frames,
    image_id='video_id',
    record='xfm_jax.data.tasks:video_record',
    augment='xfm_jax.data.augment:video_augment',
    finalize='xfm_jax.data.augment:video_finalize',
    passthrough=('frames', 'video_id'),
    record_features={'frames': ('string', 1), 'video_id': ('int32', 0), 'text_ids': ('int32', 1)},
    reads=('frames', 'video_key', 'captions'),
    schemas=('video',),
)
