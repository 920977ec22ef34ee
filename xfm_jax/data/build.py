r"""Builds a config's data sources ahead of training, optionally as an Apache Beam pipeline.

    python -m xfm_jax.data.build --config=configs/xfm_base.py:captions \
        --config.data.user_sources.captions.path='gs://BUCKET/cc3m/*.json' \
        --beam_runner=DirectRunner \
        --beam_options='--direct_num_workers=8 --direct_running_mode=multi_processing'

builds every ``data.user_sources`` source of the config (or those ``--sources`` names, built-in
ones included) into ``data.tfds_data_dir`` and prints each split's "accepted N of M records".
Training, evaluation and fine-tuning then find the built files and read them. Without
``--beam_runner`` / ``--beam_options`` a source builds in this process, as on first use; with
them, ``xfm_user`` sources share their files (one work unit per shard) out to Beam workers:
DirectRunner on this machine, or a cluster runner (docs/data.md: Spark, Flink, Dataflow). On a
multi-host run, build once with this command before the hosts start.
"""

from __future__ import annotations

import json
import os
import shlex

from absl import app, flags
from ml_collections import config_flags

from xfm_jax import cli, paths

config_flags.DEFINE_config_file('config', None, 'Run config (configs/*.py[:preset]).',
                                lock_config=False)
_SOURCES = flags.DEFINE_list('sources', None, 'Sources to build (default: every '
                             'data.user_sources source of the config).')
_RUNNER = flags.DEFINE_string('beam_runner', None, 'Beam runner name, e.g. DirectRunner, '
                              'SparkRunner, FlinkRunner, DataflowRunner.')
_FORMAT = flags.DEFINE_enum('file_format', 'array_record', ['array_record', 'tfrecord'],
                            'array_record: what training reads. tfrecord: for a build on '
                            'Dataflow into gs://, converted afterwards (docs/data.md).')
_CONVERT = flags.DEFINE_string('convert_from', None, 'Instead of building: a TFRecord build\'s '
                               'version folder (local or gs://, .../xfm_user/NAME/1.0.0) '
                               'copied as ArrayRecord into data.tfds_data_dir.')
_OPTIONS = flags.DEFINE_string('beam_options', None, 'Beam pipeline options as one string, e.g. '
                               '"--direct_num_workers=8 --direct_running_mode=multi_processing".')


def build(data_config, names=None, beam_runner=None, beam_options=None,
          file_format='array_record') -> dict[str, dict]:
    """Builds the named sources (default: the user sources) of a data config; returns
    {source: {split: {'accepted': n, 'bad': {reason: n}, ...}}}."""
    from xfm_jax.data import tasks  # pylint: disable=import-outside-toplevel
    from xfm_jax.data.builders import schema  # pylint: disable=import-outside-toplevel
    known = tasks.sources(data_config)
    names = list(names) if names else sorted(data_config.get('user_sources') or {})
    if not names:
        raise ValueError('nothing to build: the config has no data.user_sources; name built-in '
                         f'sources with --sources (known: {sorted(known)}).')
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f'--sources {unknown} are not sources of this config; known: '
                         f'{sorted(known)}.')
    options = None
    if beam_runner or beam_options:
        try:
            import apache_beam as beam  # pylint: disable=import-outside-toplevel
        except ImportError as error:
            raise ValueError('--beam_runner / --beam_options need Apache Beam: pip install '
                             "apache-beam==2.77.0 (or pip install -e '.[beam]').") from error
        if beam_options:
            options = beam.options.pipeline_options.PipelineOptions(shlex.split(beam_options))
    report = {}
    for name in names:
        builder = tasks.load_builder(known[name], data_config.tfds_data_dir,
                                     beam_runner=beam_runner, beam_options=options,
                                     file_format=file_format)
        report[name] = {split: schema.accounting(builder.info.metadata or {}, split)
                        for split in builder.info.splits}
    return report


def convert(built: str, data_dir: str) -> str:
    """Copies a TFRecord build (its version folder ``.../<dataset>/<config>/<version>``, local or
    ``gs://``) as ArrayRecord to the same place under ``data_dir``; returns that folder. The
    records are the same bytes; the JSON files (features, accounting metadata) are copied and
    the dataset info names the new format."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    source = paths.resolve(built)
    info_file = source / 'dataset_info.json'
    if not info_file.exists():
        raise FileNotFoundError(f'--convert_from {built}: no dataset_info.json there (name a '
                                'built version folder, e.g. .../xfm_user/NAME/1.0.0).')
    info = json.loads(info_file.read_text())
    if info.get('fileFormat') != 'tfrecord':
        raise ValueError(f'--convert_from {built} holds {info.get("fileFormat")!r} files, not '
                         'tfrecord.')
    target = paths.resolve(data_dir).joinpath(*source.parts[-3:])
    target.mkdir(parents=True, exist_ok=True)
    shards = sorted(source.glob('*.tfrecord-*'), key=os.fspath)
    for shard in shards:
        tfds.core.file_adapters.ArrayRecordFileAdapter.write_examples(
            target / shard.name.replace('.tfrecord-', '.array_record-'),
            ((None, r) for r in tf.data.TFRecordDataset(os.fspath(shard)).as_numpy_iterator()))
    for name in (p.name for p in source.glob('*.json') if p.name != 'dataset_info.json'):
        (target / name).write_bytes((source / name).read_bytes())
    (target / 'dataset_info.json').write_text(json.dumps({**info,
                                                         'fileFormat': 'array_record'}))
    print(f'converted {len(shards)} shards of {built} to {target}', flush=True)
    return os.fspath(target)


def main(argv):
    del argv
    if _CONVERT.value:
        try:
            convert(_CONVERT.value, flags.FLAGS.config.data.tfds_data_dir)
        except (ValueError, FileNotFoundError) as error:
            cli.fatal(error, status=1)
        return
    try:
        report = build(flags.FLAGS.config.data, _SOURCES.value, _RUNNER.value, _OPTIONS.value,
                       _FORMAT.value)
    except (ValueError, FileNotFoundError) as error:
        cli.fatal(error, status=1)
    from xfm_jax.data.builders import schema  # pylint: disable=import-outside-toplevel
    for name, splits in report.items():
        for split, counts in sorted(splits.items()):
            print(schema.DropLog.from_accounting(f'{name}/{split}', counts).summary(), flush=True)


if __name__ == '__main__':
    app.run(main, flags_parser=cli.parse_flags)
