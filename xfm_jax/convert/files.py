"""Reading and writing checkpoint files: PyTorch pickles, safetensors and Orbax.

Every path goes through ``xfm_jax.paths``, so local files and ``gs://`` URIs work alike. torch is
imported only to read or write ``.pth`` / ``.th`` / ``.bin`` / ``.pt`` files; safetensors are
read and written with numpy alone, and the mapping itself is numpy.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

from xfm_jax import paths

TORCH_SUFFIXES = ('.pth', '.th', '.bin', '.pt')
PARAMS_DIR = 'params'  # the Orbax checkpoint inside a converted output directory
MODEL_CONFIG = 'model_config.json'


def _safetensors_dtypes() -> dict[str, Any]:
    import ml_dtypes  # numpy has no bfloat16; jax's own dtype package reads it
    return {'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
            'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
            'BOOL': np.bool_}


def _torch_to_numpy(key: str, value: Any) -> np.ndarray:
    import torch
    if not isinstance(value, torch.Tensor):
        raise ValueError(f'state dict entry {key!r} is a {type(value).__name__}, not a tensor.')
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
        value = value.float()
    return value.numpy()


def _read_safetensors(path, data: bytes) -> tuple[dict[str, np.ndarray], dict | None]:
    """(tensors, the JSON ``config`` of the metadata). ``safetensors.deserialize`` is its numpy
    reader's core without the numpy dtype table, which lacks bfloat16 (read here as float32)."""
    from safetensors import SafetensorError, deserialize
    try:
        entries = deserialize(data)
        header = json.loads(data[8:8 + int.from_bytes(data[:8], 'little')])
    except (SafetensorError, ValueError) as e:  # json errors are ValueErrors
        raise ValueError(f'{path} is not a readable safetensors file ({e}).') from e
    dtypes = _safetensors_dtypes()
    state_dict = {}
    for key, entry in entries:
        if entry['dtype'] not in dtypes:
            raise ValueError(f'{path}: tensor {key} has dtype {entry["dtype"]}, which this reader '
                             f'does not take ({sorted(dtypes)}).')
        value = np.frombuffer(entry['data'], dtypes[entry['dtype']]).reshape(entry['shape'])
        state_dict[key] = value.astype(np.float32) if entry['dtype'] == 'BF16' else value.copy()
    metadata = header.get('__metadata__') or {}
    return state_dict, (json.loads(metadata['config']) if 'config' in metadata else None)


def _gist(error: Exception) -> str:
    """The line of a loader's message that says what failed (torch's span many lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return next((line for line in lines if 'Unsupported' in line), lines[0] if lines else
                type(error).__name__)


def _read_torch(path) -> Any:
    import torch
    try:
        with path.open('rb') as f:  # a seekable file, local or remote: no copy in memory
            return torch.load(f, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        if 'Unsupported global' not in str(e):  # a damaged pickle, not a refused object
            raise ValueError(f'{path} is not a readable PyTorch checkpoint ({_gist(e)}).') from e
        raise ValueError(
            f'{path} holds Python objects beyond tensors and plain containers, and loading them '
            'would run arbitrary code from the file (torch.load(weights_only=False)); this reader '
            'refuses. If you trust the file, re-save its state dict in a separate process, e.g. '
            '`ckpt = torch.load(path, weights_only=False); torch.save({"model": ckpt["model"], '
            f'"config": dict(ckpt.get("config", {{}}))}}, new_path)`. Loader said: {_gist(e)}'
        ) from e
    except (RuntimeError, EOFError, OSError) as e:  # truncated, or not a torch file at all
        raise ValueError(f'{path} is not a readable PyTorch checkpoint ({_gist(e)}).') from e


def read_checkpoint(path: paths.PathLike) -> tuple[dict[str, np.ndarray], dict | None, dict | None]:
    """A checkpoint file (local or ``gs://``) -> (state dict of numpy arrays, embedded config,
    the ``config.json`` beside the file).

    Accepts ``{'model': state_dict, 'config': {...}}`` (the reference trainers' format; BEiT's
    ``'module'`` also) or a bare state dict, as a PyTorch file or ``.safetensors`` (whose
    metadata may hold a JSON ``config``). A ``config.json`` beside the file (the HF layout) is
    returned as the third value.
    """
    path = paths.resolve(path)
    if not path.is_file():
        raise FileNotFoundError(f'No checkpoint file at {path}.')
    config = None
    if path.name.endswith('.safetensors'):
        state_dict, config = _read_safetensors(path, path.read_bytes())
    elif path.name.endswith(TORCH_SUFFIXES):
        obj = _read_torch(path)
        if not isinstance(obj, Mapping):
            raise ValueError(f'{path} holds a {type(obj).__name__}, expected a state dict or '
                             "{'model': state_dict, 'config': ...}.")
        wrapper = next((k for k in ('model', 'module') if isinstance(obj.get(k), Mapping)), None)
        if wrapper is not None:
            config = obj.get('config') if isinstance(obj.get('config'), Mapping) else None
            obj = obj[wrapper]
        state_dict = {key: _torch_to_numpy(key, value) for key, value in obj.items()}
    else:
        raise ValueError(f'Unsupported checkpoint file {path}: expected .safetensors or one of '
                         f'{TORCH_SUFFIXES}.')
    beside = path.parent / 'config.json'
    hf_config = paths.read_json(beside) if beside.is_file() else None
    return state_dict, (dict(config) if config is not None else None), hf_config


def write_checkpoint(path: paths.PathLike, state_dict: Mapping[str, np.ndarray],
                     config: dict | None = None):
    """Writes ``{'model': state_dict, 'config': config}`` (torch.save) or a .safetensors file
    with the config as JSON metadata, locally or to ``gs://``."""
    path = paths.resolve(path)
    arrays = {k: np.array(v, order='C') for k, v in state_dict.items()}
    if path.name.endswith('.safetensors'):
        from safetensors.numpy import save
        data = save(arrays, metadata={'config': json.dumps(config)} if config is not None else None)
    elif path.name.endswith(TORCH_SUFFIXES):
        import torch
        buffer = io.BytesIO()
        torch.save({'model': {k: torch.from_numpy(v) for k, v in arrays.items()},
                    'config': config or {}}, buffer)
        data = buffer.getvalue()
    else:
        raise ValueError(f'Unsupported output file {path}: use .safetensors or one of '
                         f'{TORCH_SUFFIXES}.')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def save_converted(directory: paths.PathLike, params: Any, model_config: dict):
    """``directory/params`` (Orbax, ``{'params': params}``) + ``directory/model_config.json``."""
    import orbax.checkpoint as ocp
    directory = paths.resolve(directory)
    directory.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / PARAMS_DIR, {'params': params})
    checkpointer.wait_until_finished()
    paths.write_json(directory / MODEL_CONFIG, model_config)


def load_converted(directory: paths.PathLike) -> tuple[dict, dict]:
    """Inverse of :func:`save_converted`: (params as numpy, model_config.json contents)."""
    import jax
    import orbax.checkpoint as ocp
    directory = paths.resolve(directory)
    if directory.name == PARAMS_DIR:
        directory = directory.parent
    config_path = directory / MODEL_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f'{config_path} is missing: {directory} is not an output of '
                                '`python -m xfm_jax.convert`.')
    model_config = paths.read_json(config_path)
    restored = ocp.StandardCheckpointer().restore(directory / PARAMS_DIR)
    return jax.tree.map(np.asarray, restored['params']), model_config
