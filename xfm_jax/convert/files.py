"""Reading and writing checkpoint files: PyTorch pickles, safetensors and Orbax.

torch is imported only here and only to read or write ``.pth`` / ``.th`` / ``.bin`` / ``.pt``
files; the mapping itself is numpy.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

TORCH_SUFFIXES = ('.pth', '.th', '.bin', '.pt')
PARAMS_DIR = 'params'  # the Orbax checkpoint inside a converted output directory
MODEL_CONFIG = 'model_config.json'


def _to_numpy(key: str, value: Any) -> np.ndarray:
    import torch
    if not isinstance(value, torch.Tensor):
        raise ValueError(f'state dict entry {key!r} is a {type(value).__name__}, not a tensor.')
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
        value = value.float()
    return value.numpy()


def _read_torch(path: str) -> Any:
    import torch
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f'{path} holds Python objects beyond tensors and plain containers, and loading them '
            'would run arbitrary code from the file (torch.load(weights_only=False)); this reader '
            'refuses. If you trust the file, re-save its state dict in a separate process, e.g. '
            '`ckpt = torch.load(path, weights_only=False); torch.save({"model": ckpt["model"], '
            f'"config": dict(ckpt.get("config", {{}}))}}, new_path)`. Loader said: {e}') from e


def read_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict | None, dict | None]:
    """A checkpoint file -> (state dict of numpy arrays, embedded config, HF config.json).

    Accepts ``{'model': state_dict, 'config': {...}}`` (the reference trainers' format; BEiT's
    ``'module'`` also) or a bare state dict, as a PyTorch file or ``.safetensors`` (whose
    metadata may hold a JSON ``config``). A ``config.json`` beside the file (HF layout) is
    returned as the third value.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'No checkpoint file at {path}.')
    config = None
    if path.endswith('.safetensors'):
        from safetensors import safe_open
        with safe_open(path, framework='pt') as f:
            state_dict = {key: _to_numpy(key, f.get_tensor(key)) for key in f.keys()}
            metadata = f.metadata() or {}
        config = json.loads(metadata['config']) if 'config' in metadata else None
    elif path.endswith(TORCH_SUFFIXES):
        obj = _read_torch(path)
        if not isinstance(obj, Mapping):
            raise ValueError(f'{path} holds a {type(obj).__name__}, expected a state dict or '
                             "{'model': state_dict, 'config': ...}.")
        wrapper = next((k for k in ('model', 'module') if isinstance(obj.get(k), Mapping)), None)
        if wrapper is not None:
            config = obj.get('config') if isinstance(obj.get('config'), Mapping) else None
            obj = obj[wrapper]
        state_dict = {key: _to_numpy(key, value) for key, value in obj.items()}
    else:
        raise ValueError(f'Unsupported checkpoint file {path}: expected .safetensors or one of '
                         f'{TORCH_SUFFIXES}.')
    hf_config_path = os.path.join(os.path.dirname(os.path.abspath(path)), 'config.json')
    hf_config = None
    if os.path.isfile(hf_config_path):
        with open(hf_config_path) as f:
            hf_config = json.load(f)
    return state_dict, (dict(config) if config is not None else None), hf_config


def write_checkpoint(path: str, state_dict: Mapping[str, np.ndarray], config: dict | None = None):
    """Writes ``{'model': state_dict, 'config': config}`` (torch.save) or a .safetensors file
    with the config as JSON metadata."""
    if path.endswith('.safetensors'):
        from safetensors.numpy import save_file
        save_file({k: np.array(v, order='C') for k, v in state_dict.items()}, path,
                  metadata={'config': json.dumps(config)} if config is not None else None)
        return
    if not path.endswith(TORCH_SUFFIXES):
        raise ValueError(f'Unsupported output file {path}: use .safetensors or one of '
                         f'{TORCH_SUFFIXES}.')
    import torch
    tensors = {k: torch.from_numpy(np.array(v, order='C')) for k, v in state_dict.items()}
    torch.save({'model': tensors, 'config': config or {}}, path)


def save_converted(directory: str, params: Any, model_config: dict):
    """``directory/params`` (Orbax, ``{'params': params}``) + ``directory/model_config.json``."""
    import orbax.checkpoint as ocp
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(directory, PARAMS_DIR), {'params': params})
    checkpointer.wait_until_finished()
    with open(os.path.join(directory, MODEL_CONFIG), 'w') as f:
        json.dump(model_config, f, indent=2, sort_keys=True)


def load_converted(directory: str) -> tuple[dict, dict]:
    """Inverse of :func:`save_converted`: (params as numpy, model_config.json contents)."""
    import jax
    import orbax.checkpoint as ocp
    directory = os.path.abspath(directory)
    if os.path.basename(directory) == PARAMS_DIR:
        directory = os.path.dirname(directory)
    config_path = os.path.join(directory, MODEL_CONFIG)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f'{config_path} is missing: {directory} is not an output of '
                                '`python -m xfm_jax.convert`.')
    with open(config_path) as f:
        model_config = json.load(f)
    restored = ocp.StandardCheckpointer().restore(os.path.join(directory, PARAMS_DIR))
    return jax.tree.map(np.asarray, restored['params']), model_config
