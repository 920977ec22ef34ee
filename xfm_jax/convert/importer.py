"""Importing checkpoint files into params outputs (OUT/params + OUT/model_config.json): the
``python -m xfm_jax.convert`` import, and the cached import that lets ``train.init_from`` (or
any ``checkpoint.locate`` caller) take a checkpoint file directly."""

from __future__ import annotations

import dataclasses
import hashlib
import re

import numpy as np

from xfm_jax import paths
from xfm_jax.convert import files, formats, targets, tree, weights


@dataclasses.dataclass
class ImportOptions:
    """The import's settings (the command line's flags of the same names)."""
    input: str | None = None  # None: --text_input alone (a language tower)
    format: str | None = None
    image_size: int | None = None
    text_num_heads: int | None = None
    text_input: str | None = None
    text_format: str | None = None
    fusion_from_text_layers: str | None = None
    scan_layers: bool = False
    allow_missing: str = ''
    verbose: bool = False


TOWERS = 'towers'  # model_config.json format of a --text_input conversion
_VISION_FORMATS = ('hf_beit', 'beit2')
TEXT_FORMATS = ('hf_bert', 'hf_roberta')
# Formats whose files share key names: a given --format among them is not contradicted.
_SAME_KEYS = {'hf_bert': {'hf_roberta'}, 'hf_roberta': {'hf_bert'}}


def _check_format(given: str | None, keys, hf_config) -> str:
    """The format to read a state dict with: ``given``, unless its keys say it is another."""
    try:
        detected = formats.detect_format(keys, hf_config)
    except ValueError:
        if given is None:
            raise
        return given
    if given is not None and given != detected and detected not in _SAME_KEYS.get(given, ()):
        raise ValueError(f'--format={given}, but its keys are those of a {detected} checkpoint '
                         f'(e.g. {sorted(keys)[0]}).')
    return given or detected


def _convert(path, fmt, args, allow_missing=(), read=None):
    """One checkpoint file (``read``: its ``files.read_checkpoint`` result, when the caller
    has read it already) -> (params, model_config, reference_config, report)."""
    state_dict, reference_config, hf_config = read or files.read_checkpoint(path)  # names path
    try:
        return _convert_state_dict(state_dict, reference_config, hf_config, fmt, args,
                                   allow_missing)
    except weights.ConversionError as e:
        raise weights.ConversionError(f'{path}: {e.what}', e.problems) from None
    except ValueError as e:
        raise ValueError(f'{path}: {e}') from None


def _convert_state_dict(state_dict, reference_config, hf_config, fmt, args, allow_missing):
    fmt = _check_format(fmt, state_dict.keys(), hf_config)
    if fmt == 'hf_beit':  # sizes are read from hub names
        renamed = formats.hub_beit_names(state_dict)
        state_dict = {renamed[k]: v for k, v in state_dict.items()}
    model_config = targets.infer_model_config(
        fmt, state_dict, reference_config=reference_config, hf_config=hf_config,
        image_size=args.image_size, text_num_heads=args.text_num_heads)
    if args.scan_layers:
        model_config['scan_layers'] = True
    if fmt == 'beit2':
        allow_missing = [*allow_missing, *formats.BEIT2_OPTIONAL]
    target = targets.build_target(fmt, model_config)
    fallback = targets.build_target(fmt, model_config, abstract=False) if allow_missing else None
    params, report = weights.import_params(state_dict, target, fmt, allow_missing=allow_missing,
                                           fallback=fallback)
    reference_config = {k: v for k, v in (reference_config or {}).items()
                        if k != targets.EXPORTED_CONFIG_KEY} or None
    return fmt, params, model_config, reference_config, report


def _fusion_from_text(text_params, layer_range: str, scanned: bool) -> dict:
    """Fusion layers whose self-attention, FFN and norms copy a range of text layers, as X²-VLM's
    reference starts pre-training (BERT-base layers 6-11 -> fusion layers 0-5). Their
    cross-attention has no source: it stays out, and so keeps the model's fresh initialisation."""
    match = re.fullmatch(r'(\d+)-(\d+)', layer_range)
    if match is None:
        raise ValueError(f'--fusion_from_text_layers={layer_range!r}: expected FIRST-LAST, e.g. '
                         '6-11.')
    flat = tree.unstack_layers(tree.flatten(text_params))
    fusion = {}
    for j, i in enumerate(range(int(match.group(1)), int(match.group(2)) + 1)):
        prefix = f'encoder/layers_{i}/'
        layer = {p[len(prefix):]: np.asarray(v) for p, v in flat.items() if p.startswith(prefix)}
        if not layer:
            raise ValueError(f'--fusion_from_text_layers={layer_range}: the text tower has no '
                             f'layer {i}.')
        fusion.update({f'encoder/layers_{j}/{p}': v for p, v in layer.items()})
    return tree.unflatten(tree.stack_layers(fusion) if scanned else fusion)


def import_checkpoint(output, args: ImportOptions, read: dict | None = None) -> None:
    """Converts ``args.input`` and/or ``args.text_input`` into the params output ``output``.

    ``text_input`` alone writes a language tower (with ``fusion_from_text_layers``, fusion layers
    too) named as in the whole model, for ``train.init_from``. ``read``: {path: its
    ``files.read_checkpoint`` result} for files the caller has read already."""
    read = read or {}
    if args.fusion_from_text_layers and not args.text_input:
        raise ValueError('--fusion_from_text_layers copies layers of --text_input, which is not '
                         'given.')
    if args.input is None and args.text_input is None:
        raise ValueError('nothing to convert: give --input, --text_input or both.')
    allow_missing = [p for p in args.allow_missing.split(',') if p]
    params, saved, reports = {}, dict(format=TOWERS, towers={}), []
    if args.input is not None:
        fmt, vision, model_config, reference_config, report = _convert(
            args.input, args.format, args, allow_missing, read.get(str(args.input)))
        reports.append(report)
        if args.text_input and fmt not in _VISION_FORMATS:
            raise ValueError(f'--text_input pairs a vision tower ({_VISION_FORMATS}) with a '
                             f'language tower; {args.input} is {fmt}.')
        if not args.text_input:
            params = vision
            saved = dict(format=fmt, model=model_config, reference_config=reference_config)
        else:  # named as in the whole model, so train.init_from loads the towers by name
            params['vision_encoder'] = vision
            saved['towers']['vision_encoder'] = dict(format=fmt, model=model_config,
                                                     file=str(args.input))
    if args.text_input:
        text_fmt, text_params, text_model, _, text_report = _convert(
            args.text_input, args.text_format, args, read=read.get(str(args.text_input)))
        reports.append(text_report)
        if text_fmt not in TEXT_FORMATS:
            raise ValueError(f'{args.text_input}: --text_input takes {TEXT_FORMATS}, not '
                             f'{text_fmt}.')
        params['text_encoder'] = text_params
        saved['towers']['text_encoder'] = dict(format=text_fmt, model=text_model,
                                               file=str(args.text_input))
        if args.fusion_from_text_layers:
            params['fusion_encoder'] = _fusion_from_text(
                text_params, args.fusion_from_text_layers, args.scan_layers)
            saved['towers']['fusion_encoder'] = dict(
                text_layers=args.fusion_from_text_layers, file=str(args.text_input))
    files.save_converted(output, params, saved)
    for report in reports:
        print(report.summary(verbose=args.verbose))
    print(f'wrote {output}/{files.PARAMS_DIR} and {output}/{files.MODEL_CONFIG}')


CHECKPOINT_SUFFIXES = ('.safetensors', '.bin', '.pth', '.pt', '.th', '.ckpt')


def is_checkpoint_file(path: paths.PathLike) -> bool:
    """A file ``convert`` reads (by suffix), as opposed to a params output or training run."""
    path = paths.resolve(path)
    return path.suffix in CHECKPOINT_SUFFIXES and path.is_file()


def cached_import(path: paths.PathLike, cache_dir: paths.PathLike,
                  fusion_from_text_layers: str = '') -> paths.epath.Path:
    """The params output of checkpoint file ``path``, converted on first use into ``cache_dir``
    (one directory per file name, size, modification time and options). An HF BERT / RoBERTa
    file becomes a language tower (``text_encoder``; with ``fusion_from_text_layers`` also the
    fusion layers, as ``--fusion_from_text_layers``), anything else converts as by
    ``python -m xfm_jax.convert --input=path``."""
    path = paths.resolve(path)
    info = path.stat()
    key = hashlib.sha256(f'{path}|{info.length}|{info.mtime}|{fusion_from_text_layers}'
                         .encode()).hexdigest()[:16]
    output = paths.resolve(cache_dir) / f'{path.stem}-{key}'
    if (output / files.MODEL_CONFIG).exists():
        return output
    loaded = files.read_checkpoint(path)  # read once: the format decides how it converts
    text = formats.detect_format(loaded[0].keys(), loaded[2]) in TEXT_FORMATS
    print(f'converting {path} into {output} (once; later runs read the conversion)')
    if fusion_from_text_layers and not text:
        raise ValueError(f'{path}: fusion layers are copied from the text layers of an HF BERT / '
                         f'RoBERTa file; this is not one.')
    import_checkpoint(output, ImportOptions(
        input=None if text else str(path), text_input=str(path) if text else None,
        fusion_from_text_layers=fusion_from_text_layers or None), read={str(path): loaded})
    return output
