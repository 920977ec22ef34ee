r"""Command line: reference checkpoint <-> Orbax params.

Import (writes OUT/params, an Orbax checkpoint of {'params': ...}, and OUT/model_config.json):
  python -m xfm_jax.convert --input=xfm_base.th --output=OUT [--format=xfm] [--image_size=384]
      [--scan_layers] [--allow_missing='mlm_head|decoder_embedding'] [--verbose]
Export (back to the reference key names, {'model': state_dict, 'config': ...}):
  python -m xfm_jax.convert --export --input=OUT --output=xfm_base.pth
"""

from __future__ import annotations

import argparse
import sys

from xfm_jax import cli
from xfm_jax.convert import files, formats, targets, weights


def _import(args) -> None:
    state_dict, reference_config, hf_config = files.read_checkpoint(args.input)
    fmt = args.format or formats.detect_format(state_dict.keys(), hf_config)
    if fmt == 'hf_beit':  # sizes are read from hub names
        renamed = formats.hub_beit_names(state_dict)
        state_dict = {renamed[k]: v for k, v in state_dict.items()}
    model_config = targets.infer_model_config(
        fmt, state_dict, reference_config=reference_config, hf_config=hf_config,
        image_size=args.image_size)
    if args.scan_layers:
        model_config['scan_layers'] = True
    target = targets.build_target(fmt, model_config)
    allow_missing = [p for p in args.allow_missing.split(',') if p]
    fallback = targets.build_target(fmt, model_config, abstract=False) if allow_missing else None
    params, report = weights.import_params(state_dict, target, fmt, allow_missing=allow_missing,
                                           fallback=fallback)
    reference_config = {k: v for k, v in (reference_config or {}).items()
                        if k != targets.EXPORTED_CONFIG_KEY} or None
    files.save_converted(args.output, params, dict(format=fmt, model=model_config,
                                                   reference_config=reference_config))
    print(report.summary(verbose=args.verbose))
    print(f'wrote {args.output}/{files.PARAMS_DIR} and {args.output}/{files.MODEL_CONFIG}')


def _export(args) -> None:
    params, saved = files.load_converted(args.input)
    state_dict = weights.export_params(params, saved['format'])
    config = dict(saved.get('reference_config') or {})
    config[targets.EXPORTED_CONFIG_KEY] = saved['model']  # lets a re-import rebuild the same model
    files.write_checkpoint(args.output, state_dict, config)
    print(f'wrote {len(state_dict)} {saved["format"]} tensors to {args.output}')


def main(argv=None) -> None:
    parser = cli.ArgumentParser(prog='python -m xfm_jax.convert', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--input', required=True,
                        help='checkpoint file (import) or OUT dir (export)')
    parser.add_argument('--output', required=True, help='output dir (import) or file (export)')
    parser.add_argument('--export', action='store_true', help='Orbax -> reference names')
    parser.add_argument('--format', choices=formats.FORMATS, help='default: detected from keys')
    parser.add_argument('--image_size', type=int, help='target resolution (resizes relpos tables)')
    parser.add_argument('--scan_layers', action='store_true', help='store layers stacked (nn.scan)')
    parser.add_argument('--allow_missing', default='',
                        help='comma-separated regexes of our param paths that may be absent from '
                             'the checkpoint; they keep a fresh initialisation and are reported')
    parser.add_argument('--verbose', action='store_true', help='print every converted key')
    args = parser.parse_args(argv)
    try:
        (_export if args.export else _import)(args)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f'error: {e}')


if __name__ == '__main__':
    main()
