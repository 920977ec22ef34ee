r"""Command line: reference checkpoint <-> Orbax params. Paths may be local or ``gs://``.

Import (writes OUT/params, an Orbax checkpoint of {'params': ...}, and OUT/model_config.json):
  python -m xfm_jax.convert --input=xfm_base.th --output=OUT [--format=xfm] [--image_size=384]
      [--text_num_heads=12] [--scan_layers] [--allow_missing='mlm_head|decoder_embedding']
      [--verbose]
Both towers for train.init_from (vision from BEiT-2, language from an HF RoBERTa / BERT file):
  python -m xfm_jax.convert --input=beitv2_base_patch16_224_pt1k.pth --format=beit2
      --text_input=roberta-base/pytorch_model.bin --output=OUT
  (X²-VLM also starts its fusion layers from BERT layers 6-11: add --fusion_from_text_layers=6-11)
The language tower alone (train.init_from also takes such a file directly, converting it once):
  python -m xfm_jax.convert --text_input=all-MiniLM-L6-v2/model.safetensors --output=OUT
Export (back to the reference key names, {'model': state_dict, 'config': ...}):
  python -m xfm_jax.convert --export --input=OUT --output=xfm_base.pth
  python -m xfm_jax.convert --export --input=gs://bucket/runs/xfm --output=xfm_step.pth
      # a training workdir (newest step) or step directory: the model comes from the checkpoint
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from xfm_jax import cli
from xfm_jax.convert import files, formats, importer, targets, weights


def _export(args) -> None:
    """Any checkpoint ``checkpoint.locate`` accepts -> one reference file: a converted output, a
    fine-tuned output, a training workdir (its newest step) or one step directory (the model
    config comes from the checkpoint itself)."""
    from xfm_jax import checkpoint  # Orbax and jax load only for an export
    location = checkpoint.locate(args.input)
    saved = dict(location.description or {})
    if saved.get('format') == importer.TOWERS:
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
    parser.add_argument('--input',
                        help='checkpoint file (import) or OUT dir (export); local or gs://')
    parser.add_argument('--output', required=True, help='output dir (import) or file (export)')
    parser.add_argument('--export', action='store_true', help='Orbax -> reference names')
    parser.add_argument('--format', choices=formats.FORMATS, help='default: detected from keys')
    parser.add_argument('--image_size', type=int, help='target resolution (resizes relpos tables)')
    parser.add_argument('--text_num_heads', type=int,
                        help='text attention heads, where no config of the checkpoint states them')
    parser.add_argument('--text_input', help='an HF BERT or RoBERTa file for the language tower '
                        '(with a beit2 / hf_beit --input: both towers; alone: the language tower)')
    parser.add_argument('--text_format', choices=importer.TEXT_FORMATS,
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
    if args.input is None and (args.export or args.text_input is None):
        parser.error('--input is required (or --text_input alone for a language tower)')
    try:
        if args.export:
            _export(args)
        else:
            importer.import_checkpoint(args.output, importer.ImportOptions(**{
                f.name: getattr(args, f.name) for f in dataclasses.fields(importer.ImportOptions)}))
    except weights.ConversionError as e:  # a strict import lists every problem, one per line
        sys.exit(f'error: {e}')
    except (ValueError, FileNotFoundError) as e:  # every message names the file
        sys.exit(f'error: {e}'.splitlines()[0])


if __name__ == '__main__':
    main()
