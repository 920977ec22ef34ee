r"""Command line: reference checkpoint <-> Orbax params. Paths may be local or ``gs://``.

Import (writes OUT/params, an Orbax checkpoint of {'params': ...}, and OUT/model_config.json):
  python -m xfm_jax.convert --input=xfm_base.th --output=OUT [--format=xfm] [--image_size=384]
      [--text_num_heads=12] [--scan_layers] [--allow_missing='mlm_head|decoder_embedding']
      [--verbose]
Both towers for train.init_from (vision from BEiT-2, language from an HF RoBERTa / BERT file):
  python -m xfm_jax.convert --input=beitv2_base_patch16_224_pt1k.pth --format=beit2
      --text_input=roberta-base/pytorch_model.bin --output=OUT
  (X²-VLM also starts its fusion layers from BERT layers 6-11: add --fusion_from_text_layers=6-11)
Export (back to the reference key names, {'model': state_dict, 'config': ...}):
  python -m xfm_jax.convert --export --input=OUT --output=xfm_base.pth
  python -m xfm_jax.convert --export --input=gs://bucket/runs/xfm --output=xfm_step.pth
      # a training workdir (newest step) or step directory: the model comes from the checkpoint
"""

from __future__ import annotations

import argparse
import re
import sys

import numpy as np

from xfm_jax import cli
from xfm_jax.convert import files, formats, targets, tree, weights

TOWERS = 'towers'  # model_config.json format of a --text_input conversion
_VISION_FORMATS = ('hf_beit', 'beit2')
_TEXT_FORMATS = ('hf_bert', 'hf_roberta')
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


def _convert(path, fmt, args, allow_missing=()):
    """One checkpoint file -> (params, model_config, reference_config, report)."""
    state_dict, reference_config, hf_config = files.read_checkpoint(path)  # errors name path
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


def _import(args) -> None:
    if args.fusion_from_text_layers and not args.text_input:
        raise ValueError('--fusion_from_text_layers copies layers of --text_input, which is not '
                         'given.')
    allow_missing = [p for p in args.allow_missing.split(',') if p]
    fmt, params, model_config, reference_config, report = _convert(
        args.input, args.format, args, allow_missing)
    saved = dict(format=fmt, model=model_config, reference_config=reference_config)
    if args.text_input:
        if fmt not in _VISION_FORMATS:
            raise ValueError(f'--text_input pairs a vision tower ({_VISION_FORMATS}) with a '
                             f'language tower; {args.input} is {fmt}.')
        text_fmt, text_params, text_model, _, text_report = _convert(
            args.text_input, args.text_format, args)
        if text_fmt not in _TEXT_FORMATS:
            raise ValueError(f'{args.text_input}: --text_input takes {_TEXT_FORMATS}, not '
                             f'{text_fmt}.')
        # Named as in the whole model, so train.init_from loads both towers by name.
        params = {'vision_encoder': params, 'text_encoder': text_params}
        saved = dict(format=TOWERS, towers=dict(
            vision_encoder=dict(format=fmt, model=model_config, file=str(args.input)),
            text_encoder=dict(format=text_fmt, model=text_model, file=str(args.text_input))))
        if args.fusion_from_text_layers:
            params['fusion_encoder'] = _fusion_from_text(
                text_params, args.fusion_from_text_layers, args.scan_layers)
            saved['towers']['fusion_encoder'] = dict(
                text_layers=args.fusion_from_text_layers, file=str(args.text_input))
        print(text_report.summary(verbose=args.verbose))
    files.save_converted(args.output, params, saved)
    print(report.summary(verbose=args.verbose))
    print(f'wrote {args.output}/{files.PARAMS_DIR} and {args.output}/{files.MODEL_CONFIG}')


def _export(args) -> None:
    """Any checkpoint ``checkpoint.locate`` accepts -> one reference file: a converted output, a
    fine-tuned output, a training workdir (its newest step) or one step directory (the model
    config comes from the checkpoint itself)."""
    from xfm_jax import checkpoint  # Orbax and jax load only for an export
    location = checkpoint.locate(args.input)
    saved = dict(location.description or {})
    if saved.get('format') == TOWERS:
        raise ValueError(f'{args.input}: a --text_input conversion (two towers) is for '
                         'train.init_from; export converts one checkpoint format, so convert '
                         'each tower alone.')
    params, model, location = checkpoint.read_params_numpy(location)
    saved.update(format=location.family, model=model)
    try:
        state_dict = weights.export_params(params, saved['format'])
    except ValueError as e:
        raise ValueError(f'{args.input}: {e}') from None
    config = dict(saved.get('reference_config') or {})
    config[targets.EXPORTED_CONFIG_KEY] = saved['model']  # lets a re-import rebuild the same model
    files.write_checkpoint(args.output, state_dict, config)
    print(f'wrote {len(state_dict)} {saved["format"]} tensors to {args.output}')


def main(argv=None) -> None:
    parser = cli.ArgumentParser(prog='python -m xfm_jax.convert', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--input', required=True,
                        help='checkpoint file (import) or OUT dir (export); local or gs://')
    parser.add_argument('--output', required=True, help='output dir (import) or file (export)')
    parser.add_argument('--export', action='store_true', help='Orbax -> reference names')
    parser.add_argument('--format', choices=formats.FORMATS, help='default: detected from keys')
    parser.add_argument('--image_size', type=int, help='target resolution (resizes relpos tables)')
    parser.add_argument('--text_num_heads', type=int,
                        help='text attention heads, where no config of the checkpoint states them')
    parser.add_argument('--text_input', help='with a beit2 / hf_beit --input: an HF BERT or '
                        'RoBERTa file for the language tower (writes both towers)')
    parser.add_argument('--text_format', choices=_TEXT_FORMATS,
                        help='format of --text_input (default: detected)')
    parser.add_argument('--fusion_from_text_layers',
                        help='with --text_input: FIRST-LAST text layers whose self-attention and '
                             'FFN start the fusion layers (X²-VLM base: 6-11)')
    parser.add_argument('--scan_layers', action='store_true', help='store layers stacked (nn.scan)')
    parser.add_argument('--allow_missing', default='',
                        help='comma-separated regexes of our param paths that may be absent from '
                             'the checkpoint; they keep a fresh initialisation and are reported')
    parser.add_argument('--verbose', action='store_true', help='print every converted key')
    args = parser.parse_args(argv)
    try:
        (_export if args.export else _import)(args)
    except weights.ConversionError as e:  # a strict import lists every problem, one per line
        sys.exit(f'error: {e}')
    except (ValueError, FileNotFoundError) as e:  # every message names the file
        sys.exit(f'error: {e}'.splitlines()[0])


if __name__ == '__main__':
    main()
