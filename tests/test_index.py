"""LossIndex: filtered search, exact vs HNSW, atomic save/load and its refusals."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from typer.testing import CliRunner

from lossrag.cli import app
from lossrag.index import LossIndex, default_index, library_fingerprint


@pytest.fixture(scope="module")
def index() -> LossIndex:
    return default_index()


def test_search_is_filtered_by_kind_and_ranked(index):
    query = index.vectors[index.row("huber(delta=0.5)")]
    for kind in ("regression", "classification", "multilabel", "representation"):
        hits = index.search(query, kind, 10)[0]
        assert len(hits) == 10
        assert all(h.entry.kind == kind for h in hits)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
    top = index.search(query, "regression", 1)[0][0]
    assert top.score == pytest.approx(1.0, abs=1e-5)


def test_search_rejects_bad_queries(index, only_regression):
    with pytest.raises(ValueError, match="unknown task kind 'regresion'"):
        index.search(index.vectors[0], "regresion", 3)
    with pytest.raises(ValueError, match="columns"):
        index.search(np.ones(3), "regression", 3)
    with pytest.raises(ValueError, match="no loss for 'classification' tasks"):
        only_regression.search(index.vectors[0], "classification", 3)


def test_hnsw_agrees_with_exact_search(index):
    approx = LossIndex(
        index.entries, index.vectors, index.normaliser, index.fingerprint, exact_limit=10
    )
    queries = index.vectors[::7]
    recall = []
    for q in queries:
        kth = index.search(q, "regression", 10)[0][-1].score
        found = approx.search(q, "regression", 10)[0]
        recall.append(sum(h.score >= kth - 1e-5 for h in found) / 10)  # ties count
    assert np.mean(recall) >= 0.95


def test_save_load_round_trip(index, tmp_path):
    path = tmp_path / "lib.lossidx"
    index.save(path)
    loaded = LossIndex.load(path, expect=library_fingerprint())
    assert [e.id for e in loaded.entries] == [e.id for e in index.entries]
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    q = index.vectors[index.row("ce")]
    assert [h.row for h in loaded.search(q, "classification", 5)[0]] == [
        h.row for h in index.search(q, "classification", 5)[0]
    ]
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_load_refuses_other_libraries_dimensions_and_corrupt_files(index, tmp_path):
    path = tmp_path / "lib.lossidx"
    index.save(path)
    with pytest.raises(ValueError, match="another library version"):
        LossIndex.load(path, expect="0" * 16)

    def rewrite(change):
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("meta.json"))
            vectors = zf.read("vectors.npy")
        change(meta)
        bad = tmp_path / "bad.lossidx"
        with zipfile.ZipFile(bad, "w") as zf:
            zf.writestr("meta.json", json.dumps(meta))
            zf.writestr("vectors.npy", vectors)
        return bad

    with pytest.raises(ValueError, match="12-dimensional"):
        LossIndex.load(rewrite(lambda m: m.update(dim=12)))
    with pytest.raises(ValueError, match="embedding version 99"):
        LossIndex.load(rewrite(lambda m: m.update(embed_version=99)))
    torn = tmp_path / "torn.lossidx"
    torn.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable loss index"):
        LossIndex.load(torn)


def test_build_index_cli(tmp_path):
    out = tmp_path / "idx.lossidx"
    result = CliRunner().invoke(app, ["library", "build-index", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "568 entries" in result.output
    assert len(LossIndex.load(out, expect=library_fingerprint())) == 568
    bad = CliRunner().invoke(app, ["library", "build-index", "--density", "0"])
    assert bad.exit_code == 2 and "--density" in bad.output
