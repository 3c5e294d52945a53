"""``LossIndex``: the FAISS index of loss embeddings, with its sidecar and version.

One index per task kind (search is always filtered by kind, so a query never returns a loss the
task cannot use): exact inner product (``IndexFlatIP``) for small libraries, HNSW above
``exact_limit`` entries. Vectors are unit-norm, so scores are cosines. ``save``/``load`` use one
file written atomically; the file records the embedding version and a fingerprint of the library
cards, and loading it for another library, version or dimension is a clear error.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lossrag._util import atomic_write_bytes, cache_dir
from lossrag.embed import EMBED_VERSION, RAW_DIM, Embedder, Normaliser, variant_id
from lossrag.losses import LossRegistry, registry
from lossrag.tasks import KINDS

__all__ = ["Entry", "Hit", "LossIndex", "default_index", "library_fingerprint"]

_FORMAT = 1


def library_fingerprint(losses: LossRegistry = registry, density: int = 1) -> str:
    """A short hash of the library cards, the embedding version and the grid density."""
    h = hashlib.sha256(f"embed{EMBED_VERSION}-density{density}".encode())
    for path in sorted(losses.folder.glob("*.toml")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Entry:
    """One library entry: a loss with fixed hyper-parameters, for one task kind."""

    name: str
    params: dict[str, float]
    kind: str

    @property
    def id(self) -> str:
        """``name(param=value, ...)``."""
        return variant_id(self.name, self.params)


@dataclass(frozen=True)
class Hit:
    """A search result: the entry, its row in the index and its cosine score."""

    entry: Entry
    row: int
    score: float


@dataclass
class LossIndex:
    """Unit-norm loss embeddings in per-kind FAISS indexes, with the id -> loss sidecar.

    Build one with :meth:`build` (or :func:`default_index` for the shipped library), search with
    :meth:`search`, persist with :meth:`save` / :meth:`load`.
    """

    entries: list[Entry]
    vectors: np.ndarray
    normaliser: Normaliser
    fingerprint: str
    exact_limit: int = 4096
    hnsw_m: int = 32
    ef_search: int = 64
    _rows: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _faiss: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.vectors.shape != (len(self.entries), RAW_DIM):
            raise ValueError(
                f"LossIndex: {len(self.entries)} entries need vectors of shape "
                f"({len(self.entries)}, {RAW_DIM}), got {self.vectors.shape}."
            )
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        kinds = np.array([e.kind for e in self.entries])
        for kind in KINDS:
            rows = np.flatnonzero(kinds == kind)
            if len(rows):
                self._rows[kind] = rows
                self._faiss[kind] = self._make(self.vectors[rows])

    def _make(self, vectors: np.ndarray) -> Any:
        import faiss  # here, not at the top: `import lossrag` must not load FAISS

        index: Any
        if len(vectors) <= self.exact_limit:
            index = faiss.IndexFlatIP(RAW_DIM)
        else:
            index = faiss.IndexHNSWFlat(RAW_DIM, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            index.hnsw.efSearch = self.ef_search
        index.add(vectors)
        return index

    @property
    def dim(self) -> int:
        """Length of the vectors."""
        return RAW_DIM

    @property
    def metric(self) -> str:
        """Always ``inner_product`` (cosine on unit vectors)."""
        return "inner_product"

    def __len__(self) -> int:
        return len(self.entries)

    def kinds(self) -> list[str]:
        """The task kinds the library has entries for."""
        return list(self._rows)

    def faiss_index(self, kind: str) -> Any:
        """The FAISS index holding the entries of ``kind`` (rows as in :meth:`rows_of`)."""
        return self._faiss[kind]

    def rows_of(self, kind: str) -> np.ndarray:
        """Rows of the entries of ``kind``."""
        return self._rows.get(kind, np.zeros(0, dtype=np.int64))

    def vector(self, entry: Entry) -> np.ndarray:
        """The unit vector of ``entry``: its row if it is in the index, else embedded now on the
        canonical probe (a loss with hyper-parameters off the grid)."""
        try:
            return self.vectors[self.row(entry.id)]
        except KeyError:
            raw = Embedder().canonical(entry.name, entry.params, entry.kind)
            return self.normaliser(raw)

    def row(self, entry_id: str) -> int:
        """The row of the entry with ``entry_id`` (``KeyError`` naming close ids otherwise)."""
        lookup = getattr(self, "_lookup", None)
        if lookup is None:
            lookup = {e.id: i for i, e in enumerate(self.entries)}
            self._lookup = lookup
        if entry_id not in lookup:
            raise KeyError(f"Loss {entry_id!r} is not in this index ({len(self)} entries).")
        return int(lookup[entry_id])

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        losses: LossRegistry = registry,
        density: int = 1,
        progress: Callable[[int], None] | None = None,
        **options: Any,
    ) -> LossIndex:
        """Embed every variant of ``losses`` (grid densified by ``density``) and index them."""
        variants = losses.variants(density=density)
        raw = Embedder(losses).library(variants, progress)
        normaliser = Normaliser.fit(raw)
        entries = [Entry(n, dict(p), losses.spec(n).kinds[0]) for n, p in variants]
        return cls(
            entries, normaliser(raw), normaliser, library_fingerprint(losses, density), **options
        )

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, kind: str, k: int) -> list[list[Hit]]:
        """The ``k`` entries of ``kind`` with the largest inner product, for each query row.

        ``queries`` is ``(n, dim)`` or ``(dim,)``; rows are L2-normalised here. An unknown kind or
        a kind without entries is a ValueError.
        """
        if kind not in KINDS:
            raise ValueError(f"LossIndex.search: unknown task kind {kind!r}; kinds: {KINDS}.")
        if kind not in self._faiss:
            raise ValueError(
                f"LossIndex.search: the library has no loss for {kind!r} tasks "
                f"(it has {', '.join(self.kinds()) or 'none'})."
            )
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != RAW_DIM:
            raise ValueError(f"LossIndex.search: queries need {RAW_DIM} columns, got {q.shape[1]}.")
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        rows = self._rows[kind]
        scores, found = self._faiss[kind].search(q, min(k, len(rows)))
        return [
            [
                Hit(self.entries[rows[j]], int(rows[j]), float(s))
                for s, j in zip(srow, frow, strict=True)
                if j >= 0
            ]
            for srow, frow in zip(scores, found, strict=True)
        ]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index, its vectors and sidecar to one file, atomically."""
        meta = {
            "format": _FORMAT,
            "embed_version": EMBED_VERSION,
            "dim": RAW_DIM,
            "metric": self.metric,
            "fingerprint": self.fingerprint,
            "options": {
                "exact_limit": self.exact_limit,
                "hnsw_m": self.hnsw_m,
                "ef_search": self.ef_search,
            },
            "normaliser": self.normaliser.to_dict(),
            "entries": [[e.name, e.params, e.kind] for e in self.entries],
        }
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("meta.json", json.dumps(meta))
            zf.writestr("vectors.npy", _npy(self.vectors))
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike[str], expect: str | None = None) -> LossIndex:
        """Read a file written by :meth:`save`.

        Args:
            expect: The library fingerprint the caller needs (``library_fingerprint()``); an index
                built for another library or embedding version is refused.
        """
        where = Path(path)
        try:
            with zipfile.ZipFile(where) as zf:
                meta = json.loads(zf.read("meta.json"))
                vectors = np.load(io.BytesIO(zf.read("vectors.npy")), allow_pickle=False)
        except FileNotFoundError:
            raise
        except Exception as err:  # a torn or foreign file
            raise ValueError(
                f"LossIndex.load: {where} is not a readable loss index ({err})."
            ) from err
        if meta.get("format") != _FORMAT or meta.get("embed_version") != EMBED_VERSION:
            raise ValueError(
                f"LossIndex.load: {where} was written by embedding version "
                f"{meta.get('embed_version')} (format {meta.get('format')}); this LossRAG uses "
                f"{EMBED_VERSION}. Rebuild it with `lossrag library build-index`."
            )
        if meta.get("dim") != RAW_DIM:
            raise ValueError(
                f"LossIndex.load: {where} holds {meta.get('dim')}-dimensional vectors; this "
                f"LossRAG embeds in {RAW_DIM}; rebuild it with `lossrag library build-index`."
            )
        if expect is not None and meta["fingerprint"] != expect:
            raise ValueError(
                f"LossIndex.load: {where} was built for another library version "
                f"({meta['fingerprint']}, expected {expect}); rebuild it with "
                "`lossrag library build-index`."
            )
        entries = [
            Entry(n, {k: float(v) for k, v in p.items()}, kind) for n, p, kind in meta["entries"]
        ]
        return cls(
            entries,
            vectors,
            Normaliser.from_dict(meta["normaliser"]),
            meta["fingerprint"],
            **meta["options"],
        )


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


_DEFAULT: dict[str, LossIndex] = {}


def default_index(losses: LossRegistry = registry) -> LossIndex:
    """The index of the shipped library: loaded from the cache folder, built (about a second)
    and cached there when missing, stale or corrupt."""
    fingerprint = library_fingerprint(losses)
    if fingerprint in _DEFAULT:
        return _DEFAULT[fingerprint]
    path = cache_dir() / f"index-{fingerprint}.lossidx"
    try:
        index = LossIndex.load(path, expect=fingerprint)
    except (OSError, ValueError):
        index = LossIndex.build(losses)
        with contextlib.suppress(OSError):  # a read-only cache only costs a rebuild next time
            index.save(path)
    _DEFAULT[fingerprint] = index
    return index
