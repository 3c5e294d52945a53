"""On-disk cache of derived arrays (``.npz``), keyed by a name, a version and a source fingerprint.

A cache file stores its own metadata and a SHA-256 digest of every array. A file that cannot be
read, belongs to another version or source, or fails its digests is rebuilt, never trusted. Files
are written atomically, so concurrent builders cannot leave a half-written cache behind.

The folder is ``$LOSSRAG_CACHE`` or ``~/.cache/lossrag``.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lossrag._util import CACHE_ENV, atomic_write_bytes, cache_dir

__all__ = ["CACHE_ENV", "cache_dir", "cached_arrays"]

_META = "__meta__"


def _digest(array: np.ndarray) -> str:
    h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _meta(name: str, version: str, fingerprint: str) -> dict[str, str]:
    return {"name": name, "version": version, "fingerprint": fingerprint}


def _cache_path(name: str, version: str, fingerprint: str) -> Path:
    key = hashlib.sha256(json.dumps(_meta(name, version, fingerprint)).encode()).hexdigest()
    return cache_dir() / f"{name}-{key[:16]}.npz"


def _read(path: Path, expected: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Read and verify a cache file; raise ValueError saying why it can't be trusted."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(f"unreadable ({type(err).__name__}: {err})") from err
    if _META not in arrays:
        raise ValueError("no metadata")
    try:
        meta = json.loads(str(arrays.pop(_META)))
    except json.JSONDecodeError as err:
        raise ValueError("metadata is not JSON") from err
    if not isinstance(meta, dict) or {k: meta.get(k) for k in expected} != dict(expected):
        raise ValueError("it belongs to another version or source")
    digests = meta.get("sha256")
    if not isinstance(digests, dict) or set(digests) != set(arrays):
        raise ValueError("its array list does not match its metadata")
    for key, array in arrays.items():
        if _digest(array) != digests[key]:
            raise ValueError(f"array {key!r} fails its checksum")
    return arrays


def _write(path: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, str]) -> None:
    full = {**meta, "sha256": {key: _digest(a) for key, a in arrays.items()}}
    buffer = io.BytesIO()
    payload: dict[str, Any] = {_META: np.array(json.dumps(full)), **arrays}
    np.savez(buffer, **payload)
    atomic_write_bytes(path, buffer.getvalue())


def cached_arrays(
    name: str,
    version: str,
    build: Callable[[], Mapping[str, np.ndarray]],
    *,
    fingerprint: str = "",
) -> dict[str, np.ndarray]:
    """Return the arrays cached under ``(name, version, fingerprint)``, building them if needed.

    Args:
        name: Cache entry name (part of the file name).
        version: Version of the code that builds the arrays; bump it when ``build`` changes.
        build: Builds the arrays (numeric dtypes, no objects) when no valid cache exists.
        fingerprint: Identifies the source data (e.g. file sizes), so new data rebuilds.

    A missing file is built silently; a corrupt or foreign file is rebuilt with a warning. When the
    cache folder is not writable the built arrays are returned with a warning.
    """
    meta = _meta(name, version, fingerprint)
    path = _cache_path(name, version, fingerprint)
    if path.exists():
        try:
            return _read(path, meta)
        except ValueError as err:
            warnings.warn(f"Cache {path} is not valid ({err}); rebuilding it.", stacklevel=2)
    arrays = {key: np.asarray(value) for key, value in build().items()}
    try:
        _write(path, arrays, meta)
    except OSError as err:
        warnings.warn(f"Could not write cache {path} ({err}); continuing without it.", stacklevel=2)
    return arrays
