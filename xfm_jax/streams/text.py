"""Text stream: sentences alone, for masked language modelling on the language encoder."""

from xfm_jax.streams.record import SOURCE_FIELD, Stream, text_fields

STREAM = Stream(
    name='text',
    fields={**text_fields(), **SOURCE_FIELD},
    sizes=('text_len',),
    record='xfm_jax.data.tasks:text_record',
    augment='xfm_jax.data.augment:text_augment',
    finalize='xfm_jax.data.augment:text_finalize',
    passthrough=(),
    record_features={'text_ids': ('int32', 1)},
    reads=('text',),
    schemas=('text',),
)
