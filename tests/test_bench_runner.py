"""`lossrag bench`: planning, resume, refusal, crash reporting, and end-to-end runs through the
command line (`bench quick` with every method is marked slow; a two-method run stays in the default
run)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from lossrag.bench.metrics import delta_m
from lossrag.bench.problems import get_problem
from lossrag.bench.runner import (
    QUICK_METHODS,
    BenchConfig,
    plan,
    report_finished,
    run_bench,
    toy_skipped,
)
from lossrag.cli import app


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSRAG_CACHE", str(tmp_path / "cache"))


def _small(**kw) -> BenchConfig:
    base = {
        "problems": ["digits-mtl"],
        "methods": ["ew", "famo"],
        "seeds": [0],
        "epochs": 1,
        "cost_steps": 5,
    }
    return BenchConfig(**{**base, **kw})


def test_plan_counts_and_protocol_exclusions():
    cfg = BenchConfig(
        problems=["digits-mtl", "gradnorm-synth-t40", "toy2d"],
        methods=["ew", "mgda", "graddrop"],
        seeds=[0, 1],
    )
    jobs = plan(cfg)
    kinds = [(j.kind, j.problem, j.method) for j in jobs]
    assert kinds.count(("train", "digits-mtl", "mgda")) == 2
    assert ("train", "gradnorm-synth-t40", "mgda") not in kinds  # T = 40: gradient methods out
    assert ("train", "gradnorm-synth-t40", "ew") in kinds
    assert ("toy", "toy2d", "graddrop") not in kinds and ("toy", "toy2d", "mgda") in kinds
    oracle = {"digits-mtl": {"digit": {"loss": "focal", "params": {}}}}
    both = BenchConfig(
        problems=["digits-mtl", "toy2d"], methods=["ew@oracle"], seeds=[0], oracle=oracle
    )
    assert {j.problem for j in plan(both) if j.method == "ew@oracle"} == {"digits-mtl"}
    assert toy_skipped(both) == {"ew@oracle": "the toy has no loss oracle"}
    stl = [j for j in jobs if j.kind == "stl" and j.problem == "digits-mtl"]
    assert len(stl) == 2 * len(get_problem("digits-mtl").scored)
    assert len({j.key for j in jobs}) == len(jobs)


def test_meta_every_reaches_the_query_methods_runs(monkeypatch):
    """``--meta-every`` goes to every training and cost run (``wrap(meta_every=...)``) of a
    method with a query stream, not to the single-task baselines nor the other methods; without
    it ``wrap`` keeps its default."""
    import lossrag.bench.fit as fit_module

    cfg = BenchConfig(problems=["digits-mtl"], methods=["lossrag-online"], seeds=[0], meta_every=10)
    jobs = plan(cfg)
    assert {j.meta_every for j in jobs if j.kind in ("train", "cost")} == {10}
    assert {j.meta_every for j in jobs if j.kind == "stl"} == {None}
    seen: list[dict] = []

    def wrap(*args, **kwargs):
        seen.append(kwargs)
        raise RuntimeError("wrapped")

    monkeypatch.setattr(fit_module, "wrap", wrap)
    for every in (10, None):
        with pytest.raises(RuntimeError, match="wrapped"):
            fit_module.fit(get_problem("digits-mtl"), "lossrag-online", 0, meta_every=every)
    assert seen[0]["meta_every"] == 10 and "meta_every" not in seen[1]
    assert seen[0]["query"] is not None
    # a method without a query stream is not given it (wrap refuses it there: --meta-every 10
    # with ew among the methods crashed its runs)
    with pytest.raises(RuntimeError, match="wrapped"):
        fit_module.fit(get_problem("digits-mtl"), "ew", 0, meta_every=10)
    assert "meta_every" not in seen[2] and seen[2]["query"] is None
    with pytest.raises(ValueError, match="meta_every"):
        BenchConfig(problems=["digits-mtl"], methods=["ew"], seeds=[0], meta_every=0)


def test_unknown_names_suggest(tmp_path):
    with pytest.raises(ValueError, match="'digits-mtl'"):
        run_bench(_small(problems=["digits-mt"]), tmp_path / "o")
    with pytest.raises(ValueError, match="'famo'"):
        run_bench(_small(methods=["famoo"]), tmp_path / "o")


def test_resume_refusal_and_crash_report(tmp_path):
    out = tmp_path / "bench"
    cfg = _small()
    results = run_bench(cfg, out)
    assert not any("error" in r for r in results)
    files = sorted((out / "runs").glob("*.json"))
    assert len(files) == len(plan(cfg))
    # a second run without a flag is refused, as is resume with another configuration
    with pytest.raises(ValueError, match="lossrag bench resume"):
        run_bench(cfg, out)
    with pytest.raises(ValueError, match="another configuration"):
        run_bench(_small(seeds=[0, 1]), out, resume=True)
    # interrupted: one result lost -> resume reruns exactly that one
    victim = out / "runs" / "train__digits-mtl__famo__s0.json"
    kept = {f: f.stat().st_mtime_ns for f in files if f != victim}
    victim.unlink()
    run_bench(cfg, out, resume=True)
    assert victim.exists()
    assert all(f.stat().st_mtime_ns == t for f, t in kept.items())
    # --force starts over
    run_bench(cfg, out, force=True)
    assert all(f.stat().st_mtime_ns != t for f, t in kept.items() if "stl__" not in f.name)


def test_crashed_run_is_reported_and_others_survive(tmp_path, monkeypatch):
    from lossrag.bench import jobs

    out = tmp_path / "crash"
    cfg = _small(methods=["ew", "mgda"])
    original = jobs._train

    def broken(job):
        if job.method == "mgda":
            raise RuntimeError("solver exploded")
        return original(job)

    monkeypatch.setitem(jobs._RUNNERS, "train", broken)
    results = [jobs.execute(j) for j in plan(cfg)]
    crashed = [r for r in results if "error" in r]
    assert [r["key"] for r in crashed] == ["train__digits-mtl__mgda__s0"]
    assert "solver exploded" in crashed[0]["error"]
    from lossrag.bench.report import write_reports

    write_reports(cfg, results, out)
    table = (out / "table.md").read_text()
    assert "(crash)" in table
    assert json.loads((out / "results.json").read_text())["runs"][1]["error"]


def _check_quick(out: Path, methods: int) -> list[dict]:
    """The results of a ``bench quick`` run in ``out``: every run finite, Δm as recomputed."""
    payload = json.loads((out / "results.json").read_text())
    runs = payload["runs"]
    assert len(runs) == methods and not any(r["error"] for r in runs)
    hib = get_problem("digits-mtl").higher_is_better
    for r in runs:
        assert all(math.isfinite(v) for v in r["metrics"].values())
        assert math.isfinite(r["delta_m"]) and r["cost_ratio"] > 0
        assert r["delta_m"] == pytest.approx(
            delta_m(r["metrics"], payload["stl"]["digits-mtl"], hib)
        )
    assert "| ew |" in (out / "table.md").read_text()
    for png in ("delta_m.png", "weights_digits-mtl.png"):
        assert Path(out / png).read_bytes()[:4] == b"\x89PNG"
    return runs


def test_cli_quick_resume_and_report(tmp_path):
    """The short end-to-end run: two methods (one of them learning from a query stream) through
    ``bench quick``, then ``resume`` and ``report`` on the finished run."""
    out = tmp_path / "quick"
    cli = CliRunner()
    result = cli.invoke(app, ["bench", "quick", "--methods", "ew,autolambda", "--out", str(out)])
    assert result.exit_code == 0, result.output
    # no terminal here: a line per finished job, not only a bar drawn at the end
    assert "bench 1/" in result.output and "train__digits-mtl__ew__s0 ok" in result.output
    runs = _check_quick(out, 2)
    assert {r["method"] for r in runs} == {"ew", "autolambda"}
    table = out / "table.md"
    table.unlink()
    result = cli.invoke(app, ["bench", "resume", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert table.is_file()  # nothing left to run: only the reports are rewritten
    result = cli.invoke(app, ["bench", "report", "--out", str(out)])
    assert result.exit_code == 0 and "digits-mtl" in result.output, result.output
    refused = cli.invoke(app, ["bench", "quick", "--methods", "ew", "--out", str(out)])
    assert refused.exit_code == 2 and "lossrag bench resume" in " ".join(refused.output.split())


@pytest.mark.slow
def test_quick_end_to_end(tmp_path):
    out = tmp_path / "quick"
    result = CliRunner().invoke(app, ["bench", "quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    runs = _check_quick(out, len(QUICK_METHODS))
    assert {"lossrag", "lossrag-online", "autolambda", "metaweighting"} <= {
        r["method"] for r in runs
    }


def _fake(kind, method, seed, metrics=None, task=None, **extra):
    job = {
        "kind": kind,
        "problem": "digits-mtl",
        "method": method,
        "seed": seed,
        "task": task,
        "epochs": None,
        "steps": None,
    }
    out = {"job": job, "key": f"{kind}__{method}__{seed}__{task}", **extra}
    if metrics is not None:
        out["metrics"] = metrics
    return out


def test_summary_marks_diverged_runs_and_ranks_per_problem():
    from lossrag.bench.report import summarise

    stl = {"digit": 0.8, "parity": 0.9, "has_loop": 0.9, "denoise": 0.02}
    good = {"digit": 0.85, "parity": 0.9, "has_loop": 0.9, "denoise": 0.02}
    worse = {"digit": 0.70, "parity": 0.8, "has_loop": 0.8, "denoise": 0.04}
    results = [_fake("stl", "ew", 0, {t: v}, task=t) for t, v in stl.items()]
    results += [
        _fake("train", "ew", 0, worse),
        _fake("train", "uw", 0, good),
        _fake("train", "famo", 0, {**good, "denoise": float("nan")}),
        _fake("train", "mgda", 0, error="RuntimeError: boom"),
    ]
    summary = summarise(results)
    rows = {r["method"]: r for r in summary["runs"]}
    assert rows["famo"]["error"].startswith("diverged") and rows["famo"]["delta_m"] is None
    assert rows["mgda"]["error"] == "RuntimeError: boom"
    assert summary["mean_rank"] == {"uw": 1.0, "ew": 2.0}  # diverged and crashed runs unranked
    expected = 100 / 4 * (-(0.85 - 0.8) / 0.8)  # only digit differs from STL
    assert rows["uw"]["delta_m"] == pytest.approx(expected)


def test_resume_retries_crashed_runs(tmp_path):
    out = tmp_path / "retry"
    cfg = _small(methods=["ew"])
    run_bench(cfg, out)
    path = out / "runs" / "train__digits-mtl__ew__s0.json"
    crashed = json.loads(path.read_text())
    crashed["error"] = "RuntimeError: transient"
    path.write_text(json.dumps(crashed))
    run_bench(cfg, out, resume=True)
    assert "error" not in json.loads(path.read_text())
    # reports from the finished problems only; nothing is run
    assert report_finished(out) == ["digits-mtl"]
    path.unlink()
    with pytest.raises(ValueError, match="no problem"):
        report_finished(out)


def test_toy2d_runs_per_start_point_and_reports(tmp_path):
    out = tmp_path / "toy"
    cfg = BenchConfig(
        problems=["toy2d"], methods=["ew", "mgda", "graddrop"], seeds=[0], toy_steps=300
    )
    assert len([j for j in plan(cfg) if j.method == "ew"]) == 5
    stream = io.StringIO()
    run_bench(cfg, out, console=Console(file=stream, width=200))
    assert "toy2d does not run graddrop: its direction is not a weighted sum" in stream.getvalue()
    payload = json.loads((out / "results.json").read_text())
    assert set(payload["toy2d"]) == {"ew", "mgda"}  # GradDrop gives no weights: not run
    assert len(payload["toy2d"]["mgda"]["pareto_distance"]) == 5
    table = (out / "table.md").read_text()
    assert "toy2d dist" in table and "EW stalls from (9, 9)" in table
    assert (out / "toy2d.png").read_bytes()[:4] == b"\x89PNG"
