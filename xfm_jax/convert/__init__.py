"""Checkpoint conversion between the reference PyTorch models (and released BEiT-2, HF
BERT/RoBERTa/BEiT weights) and our flax params. See docs/convert.md.

    state_dict, config, hf_config = read_checkpoint('xfm_base.th')
    params, report = import_params(state_dict, target_params, 'xfm')
    state_dict = export_params(params, 'xfm')
"""

from xfm_jax.convert.files import load_converted, read_checkpoint, save_converted, write_checkpoint
from xfm_jax.convert.formats import FORMATS, detect_format
from xfm_jax.convert.relpos import resize_relative_position_table
from xfm_jax.convert.targets import build_target, infer_model_config
from xfm_jax.convert.weights import ConversionError, Report, export_params, import_params

__all__ = [
    'FORMATS', 'ConversionError', 'Report', 'build_target', 'detect_format', 'export_params',
    'import_params', 'infer_model_config', 'load_converted', 'read_checkpoint',
    'resize_relative_position_table', 'save_converted', 'write_checkpoint',
]
