"""``lossrag bench index``: how fast the library embeds and how fast and exact its index is.

Two measurements on the library's own parametric grid (:meth:`LossSpec.grid` densified):

- *build*: the smallest density with at least ``build_entries`` variants is embedded and indexed
  (wall time, ``jobs`` processes of one thread each);
- *search*: the smallest density with at least ``search_entries`` variants is embedded; for each
  task kind, ``queries`` perturbed library vectors are searched one at a time on one thread in
  the approximate (HNSW) index and in an exact one, giving the latency per query and recall@k
  (a hit counts when its score reaches the exact k-th score, so tied duplicates count).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import faiss
import numpy as np

from lossrag.embed import Embedder, Normaliser
from lossrag.index import Entry, LossIndex, library_fingerprint
from lossrag.losses import registry

__all__ = ["bench_index", "density_for"]


def density_for(entries: int, limit: int = 64) -> int:
    """The smallest grid density giving at least ``entries`` library variants."""
    for density in range(1, limit + 1):
        if len(registry.variants(density=density)) >= entries:
            return density
    raise ValueError(f"No grid density up to {limit} gives {entries} library variants.")


def _embed_chunk(chunk: list[tuple[str, dict[str, float]]]) -> np.ndarray:
    import torch

    torch.set_num_threads(1)
    return Embedder().library(chunk)


def _embed(
    variants: list[tuple[str, dict[str, float]]], jobs: int, progress: Callable[[int], None]
) -> np.ndarray:
    size = 500
    chunks = [variants[i : i + size] for i in range(0, len(variants), size)]
    parts = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for part in pool.map(_embed_chunk, chunks):
            parts.append(part)
            progress(len(part))
    return np.concatenate(parts)


def _build(density: int, jobs: int, progress: Callable[[int], None]) -> LossIndex:
    variants = registry.variants(density=density)
    raw = _embed(variants, jobs, progress)
    normaliser = Normaliser.fit(raw)
    entries = [Entry(n, dict(p), registry.spec(n).kinds[0]) for n, p in variants]
    return LossIndex(entries, normaliser(raw), normaliser, library_fingerprint(density=density))


def bench_index(
    build_entries: int = 10_000,
    search_entries: int = 100_000,
    queries: int = 1000,
    k: int = 10,
    jobs: int = 2,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run both measurements; returns a JSON-ready dict (see the module docstring).

    ``progress(phase, done, total)`` is called as variants are embedded.
    """

    def reporter(phase: str, total: int) -> Callable[[int], None]:
        done = [0]

        def step(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(phase, done[0], total)

        return step

    faiss.omp_set_num_threads(1)
    d_build = density_for(build_entries)
    n_build = len(registry.variants(density=d_build))
    t0 = time.perf_counter()
    _build(d_build, jobs, reporter("build", n_build))
    build_s = time.perf_counter() - t0

    d_search = density_for(search_entries)
    n_search = len(registry.variants(density=d_search))
    t1 = time.perf_counter()
    index = _build(d_search, jobs, reporter("search index", n_search))
    search_build_s = time.perf_counter() - t1
    rng = np.random.default_rng(seed)
    kinds = []
    for kind in index.kinds():
        rows = index.rows_of(kind)
        picked = index.vectors[rng.choice(rows, size=queries)]
        q = picked + rng.normal(0, 0.05, picked.shape).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        exact = faiss.IndexFlatIP(index.dim)
        exact.add(index.vectors[rows])
        truth, _ = exact.search(q, k)
        approx = index.faiss_index(kind)
        found = np.empty_like(truth)
        t2 = time.perf_counter()
        for i in range(queries):  # one query at a time: the latency a training step sees
            found[i] = approx.search(q[i : i + 1], k)[0][0]
        latency = (time.perf_counter() - t2) / queries
        # a hit counts when it scores at least the exact k-th score: the parametric grid holds
        # exact duplicates (CE and label smoothing at 0), which tie and are interchangeable
        recall = float(np.mean((found >= truth[:, -1:] - 1e-5).sum(1) / k))
        kinds.append(
            {
                "kind": kind,
                "entries": len(rows),
                "index": type(approx).__name__,
                "latency_us": latency * 1e6,
                "recall_at_k": recall,
            }
        )
    return {
        "k": k,
        "queries": queries,
        "jobs": jobs,
        "cpus": os.cpu_count(),
        "build": {"density": d_build, "entries": n_build, "seconds": build_s},
        "search": {
            "density": d_search,
            "entries": n_search,
            "build_seconds": search_build_s,
            "kinds": kinds,
        },
    }
