"""The on-disk array cache: hits, versions, corruption and unwritable folders."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from lossrag.bench.data import cache
from lossrag.bench.data.cache import CACHE_ENV, cache_dir, cached_arrays


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


class Builder:
    def __init__(self, value: float = 1.0) -> None:
        self.calls = 0
        self.value = value

    def __call__(self) -> dict[str, np.ndarray]:
        self.calls += 1
        return {"a": np.full((3, 2), self.value), "b": np.arange(4)}


def only_file(folder: Path) -> Path:
    files = list(folder.glob("*.npz"))
    assert len(files) == 1
    return files[0]


def test_cache_dir_default_and_env(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_dir() == tmp_cache
    monkeypatch.delenv(CACHE_ENV)
    assert cache_dir() == Path.home() / ".cache" / "lossrag"


def test_hit_after_first_build(tmp_cache: Path) -> None:
    build = Builder()
    first = cached_arrays("x", "v1", build)
    second = cached_arrays("x", "v1", build)
    assert build.calls == 1
    assert np.array_equal(first["a"], second["a"]) and second["b"].tolist() == [0, 1, 2, 3]
    assert only_file(tmp_cache).name.startswith("x-")


def test_version_and_fingerprint_key_the_entry() -> None:
    build = Builder()
    cached_arrays("x", "v1", build)
    cached_arrays("x", "v2", build)
    cached_arrays("x", "v2", build, fingerprint="other data")
    assert build.calls == 3


def test_truncated_file_is_rebuilt(tmp_cache: Path) -> None:
    cached_arrays("x", "v1", Builder())
    path = only_file(tmp_cache)
    path.write_bytes(path.read_bytes()[:100])
    build = Builder()
    with pytest.warns(UserWarning, match="unreadable"):
        arrays = cached_arrays("x", "v1", build)
    assert build.calls == 1 and arrays["a"].shape == (3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cached_arrays("x", "v1", build)  # valid again
    assert build.calls == 1


def _rewrite(path: Path, update: dict[str, np.ndarray], meta_change: dict | None = None) -> None:
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays["__meta__"]))
    meta.update(meta_change or {})
    arrays.update(update)
    arrays["__meta__"] = np.array(json.dumps(meta))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize(
    ("update", "meta_change", "reason"),
    [
        ({"a": np.zeros((3, 2))}, None, "checksum"),  # data changed under a valid zip
        ({"extra": np.zeros(1)}, None, "array list"),
        ({}, {"version": "v0"}, "another version"),
        ({}, {"sha256": None}, "array list"),
    ],
)
def test_tampered_file_is_not_trusted(
    tmp_cache: Path, update: dict, meta_change: dict | None, reason: str
) -> None:
    cached_arrays("x", "v1", Builder(value=1.0))
    _rewrite(only_file(tmp_cache), update, meta_change)
    build = Builder(value=1.0)
    with pytest.warns(UserWarning, match=reason):
        arrays = cached_arrays("x", "v1", build)
    assert build.calls == 1 and np.all(arrays["a"] == 1.0)


def test_file_without_metadata_is_rebuilt(tmp_cache: Path) -> None:
    cached_arrays("x", "v1", Builder())
    path = only_file(tmp_cache)
    buffer = io.BytesIO()
    np.savez(buffer, a=np.zeros(1))
    path.write_bytes(buffer.getvalue())
    with pytest.warns(UserWarning, match="no metadata"):
        cached_arrays("x", "v1", Builder())


def test_unwritable_cache_still_returns_arrays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    build = Builder()
    with pytest.warns(UserWarning, match="Could not write"):
        arrays = cached_arrays("x", "v1", build)
    assert arrays["b"].tolist() == [0, 1, 2, 3]


def test_digest_covers_dtype_and_shape() -> None:
    a = np.zeros(4, dtype=np.float32)
    assert cache._digest(a) != cache._digest(a.reshape(2, 2))
    assert cache._digest(a) != cache._digest(a.view(np.int32))
