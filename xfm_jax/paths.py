"""The one path layer for every file the programs read or write: local paths and ``gs://`` alike.

Everything goes through ``etils.epath`` (which Orbax and TFDS use too): ``resolve`` turns a user's
path into an ``epath.Path``; local paths become absolute (tensorstore, under Orbax, reads
absolute paths only) and URIs such as ``gs://bucket/run`` stay as they are, never
``<cwd>/gs:/bucket/run``. Use ``path.open('rb')``, ``.glob``, ``.iterdir``, ``.exists`` and
``.mkdir(parents=True, exist_ok=True)`` on the result instead of ``open`` / ``os``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from etils import epath

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
    """Whether ``path`` is a URI of a remote file system (``gs://``, ``s3://`` ...)."""
    return '://' in os.fspath(path)


def resolve(path: PathLike) -> epath.Path:
    """``path`` as an ``epath.Path``: URIs unchanged, local paths expanded and made absolute."""
    if isinstance(path, epath.Path) and is_remote(path):
        return path
    text = os.fspath(path)
    if is_remote(text):
        return epath.Path(text)
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


def glob(pattern: PathLike) -> list[epath.Path]:
    """Sorted files matching ``pattern`` (``*``, ``?``, ``[..]`` in any component), local or
    remote; a pattern without wildcards names one file (returned if it exists)."""
    text = os.fspath(pattern)
    path = resolve(text)
    if not any(c in text for c in '*?['):
        return [path] if path.exists() else []
    # Split at the first component with a wildcard: epath globs relative to a concrete root.
    parts = path.parts
    first = next(i for i, part in enumerate(parts) if any(c in part for c in '*?['))
    root = epath.Path(*parts[:first]) if first else epath.Path('/')
    return sorted(root.glob('/'.join(parts[first:])), key=os.fspath)


def read_json(path: PathLike) -> Any:
    return json.loads(resolve(path).read_text())


def write_json(path: PathLike, value: Any) -> epath.Path:
    """Writes ``value`` as indented JSON, creating the parent directory; returns the path."""
    path = resolve(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True))
    return path
