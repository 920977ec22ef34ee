"""Flat views of parameter trees and the looped <-> scanned layer layouts.

Our params are addressed by '/'-joined paths (``text_encoder/encoder/layers_3/ffn/output/kernel``).
With ``model.scan_layers=True`` the per-layer modules ``layers_{i}`` / ``blocks_{i}`` become one
module ``layers`` / ``blocks`` whose params carry a leading layer axis. The weight mapping is
written for the looped layout; these helpers convert between the two.
"""

from __future__ import annotations

import collections
import re
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

_LOOPED = re.compile(r'(?:^|/)(layers|blocks)_(\d+)(?=/)')
_SCANNED = re.compile(r'(?:^|/)(layers|blocks)(?=/)')


def flatten(tree: Any) -> dict[str, Any]:
    """Nested params (boxed or not) -> {'a/b/kernel': leaf}."""
    return traverse_util.flatten_dict(nn.unbox(tree), sep='/')


def unflatten(flat: dict[str, Any]) -> dict:
    return traverse_util.unflatten_dict(flat, sep='/')


def is_scanned(flat: dict[str, Any]) -> bool:
    return any(_SCANNED.search(path) for path in flat)


def _index(leaf: Any, i: int) -> Any:
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
    return np.asarray(leaf)[i]


def unstack_layers(flat: dict[str, Any]) -> dict[str, Any]:
    """Scanned layout -> looped: ``.../layers/x`` [N, ...] -> ``.../layers_{i}/x`` [...]."""
    out = {}
    for path, leaf in flat.items():
        match = _SCANNED.search(path)
        if match is None:
            out[path] = leaf
            continue
        start, end = match.span(1)
        for i in range(leaf.shape[0]):
            out[f'{path[:start]}{match.group(1)}_{i}{path[end:]}'] = _index(leaf, i)
    return out


def stack_layers(flat: dict[str, Any]) -> dict[str, Any]:
    """Looped layout -> scanned: ``.../layers_{i}/x`` [...] -> ``.../layers/x`` [N, ...]."""
    groups: dict[str, dict[int, Any]] = collections.defaultdict(dict)
    out = {}
    for path, leaf in flat.items():
        match = _LOOPED.search(path)
        if match is None:
            out[path] = leaf
            continue
        start, end = match.span(2)
        groups[path[:start - 1] + path[end:]][int(match.group(2))] = leaf
    for path, layers in groups.items():
        if sorted(layers) != list(range(len(layers))):
            raise ValueError(f'{path}: layer indices {sorted(layers)} are not '
                             f'0..{len(layers) - 1}.')
        out[path] = np.stack([np.asarray(layers[i]) for i in range(len(layers))])
    return out


def shape_spec(tree: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{path: (shape, dtype)} of a params tree of arrays or ``jax.ShapeDtypeStruct`` s."""
    return {path: (tuple(leaf.shape), np.dtype(leaf.dtype)) for path, leaf in flatten(tree).items()}
