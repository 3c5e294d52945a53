"""The report's worst-task and starved-task columns and the mixed-code warning, on hand-made
results (digits-mtl: digit, parity, has_loop are higher-is-better accuracies; denoise is an MSE)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lossrag.bench.report import STARVED_MARGIN, summarise, summary_table, write_reports
from lossrag.bench.runner import BenchConfig

STL = {"digit": 0.8, "parity": 0.9, "has_loop": 0.9, "denoise": 0.02}
#: Per method, one metrics dict per seed.
RUNS = {
    "ew": [
        {"digit": 0.70, "parity": 0.9, "has_loop": 0.9, "denoise": 0.04},
        {"digit": 0.72, "parity": 0.9, "has_loop": 0.9, "denoise": 0.02},
    ],
    "famo": [{"digit": 0.80, "parity": 0.88, "has_loop": 0.9, "denoise": 0.021}] * 2,
    "uw": [{"digit": 0.78, "parity": 0.9, "has_loop": 0.85, "denoise": 0.05}] * 2,
    "mgda": [{"digit": 0.85, "parity": 0.95, "has_loop": 0.96, "denoise": 0.018}] * 2,
}


def _result(kind: str, method: str, seed: int, metrics: dict[str, float], code: str, task=None):
    job = {"kind": kind, "problem": "digits-mtl", "method": method, "seed": seed, "task": task}
    return {
        "job": {**job, "epochs": None, "steps": None},
        "key": f"{kind}__{method}__{seed}__{task}",
        "metrics": metrics,
        "code": code,
    }


def _results(codes: tuple[str, ...] = ("c0ffee",)) -> list[dict[str, Any]]:
    out = [
        _result("stl", "ew", seed, {t: v}, codes[0], task=t)
        for seed in (0, 1)
        for t, v in STL.items()
    ]
    out += [
        _result("train", m, seed, metrics, codes[(i + seed) % len(codes)])
        for i, (m, seeds) in enumerate(RUNS.items())
        for seed, metrics in enumerate(seeds)
    ]
    return out


def test_worst_task_is_the_relatively_most_worse_than_stl() -> None:
    worst = summarise(_results())["worst_task"]
    # EW: digit (0.8 - 0.71) / 0.8 = 11.25 % worse; denoise (0.03 - 0.02) / 0.02 = 50 % worse
    assert worst["digits-mtl|ew"]["task"] == "denoise"
    assert worst["digits-mtl|ew"]["change"] == pytest.approx(50.0)
    assert worst["digits-mtl|famo"] == {"task": "denoise", "change": pytest.approx(5.0)}
    assert worst["digits-mtl|uw"] == {"task": "denoise", "change": pytest.approx(150.0)}
    # better than STL everywhere: the worst change is the smallest gain, and negative
    assert worst["digits-mtl|mgda"]["task"] == "parity"
    assert worst["digits-mtl|mgda"]["change"] == pytest.approx(-100 * 0.05 / 0.9)


def test_starved_tasks_against_the_better_of_ew_and_famo() -> None:
    assert STARVED_MARGIN == 0.03
    starved = summarise(_results())["starved"]
    # references: digit 0.80 (famo), parity 0.90 (ew), has_loop 0.90, denoise 0.021 (famo)
    assert starved["digits-mtl|ew"]["reference"] == pytest.approx(
        {"digit": 0.80, "parity": 0.9, "has_loop": 0.9, "denoise": 0.021}
    )
    counts = {k.split("|")[1]: (v["count"], v["tasks"]) for k, v in starved.items()}
    assert counts == {
        "ew": (2, ["digit", "denoise"]),  # 11 % less accurate; MSE 43 % higher
        "famo": (0, []),  # parity 2.2 % below EW's: within the margin
        "uw": (2, ["has_loop", "denoise"]),  # digit 2.5 % below: within the margin
        "mgda": (0, []),
    }


def test_starved_needs_ew_or_famo() -> None:
    results = [r for r in _results() if r["job"]["method"] not in ("ew", "famo")]
    assert summarise(results)["starved"] == {}


def test_reports_show_the_columns_and_flag_mixed_code(tmp_path: Path) -> None:
    config = BenchConfig(problems=["digits-mtl"], methods=list(RUNS), seeds=[0, 1])
    write_reports(config, _results(("c0ffee",)), tmp_path)
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["mixed_code"] is False and payload["fingerprints"] == {"c0ffee": 16}
    table = (tmp_path / "table.md").read_text()
    assert "Warning" not in table
    assert "| mean Δm | worst task | starved |" in table
    assert payload["overall"]["uw"]["starved"] == 2
    assert payload["overall"]["uw"]["mean_worst"] == pytest.approx(150.0)
    row = next(line for line in table.splitlines() if line.startswith("| uw |"))
    assert "+150.0 %" in row and "| 2 |" in row
    assert "+150.0 % (denoise) | 2 (has_loop, denoise) |" in table  # the detail table

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_reports(config, _results(("c0ffee", "deadbeef")), mixed)
    payload = json.loads((mixed / "results.json").read_text())
    assert payload["mixed_code"] is True
    assert payload["fingerprints"] == {"c0ffee": 12, "deadbeef": 4}
    first = (mixed / "table.md").read_text().splitlines()[0]
    assert "Warning" in first and "2 different code versions" in first and "deadbeef" in first
    assert {r["code"] for r in payload["runs"]} == {"c0ffee", "deadbeef"}


def test_summary_table_orders_by_mean_rank_and_keeps_the_overall_cells() -> None:
    config = BenchConfig(problems=["digits-mtl"], methods=list(RUNS), seeds=[0, 1])
    summary = summarise(_results())
    summary["retrieval"] = {}
    lines = summary_table(json.loads(config.model_dump_json()), summary).splitlines()
    assert lines[0] == (
        "| method | mean Δm | worst task | starved | MR | cost ×EW | mean-step cost |"
    )
    ranks = summary["mean_rank"]
    assert [line.split(" | ")[0][2:] for line in lines[2:]] == sorted(RUNS, key=ranks.get)
    uw = next(line for line in lines if line.startswith("| uw |"))
    assert f"| +150.0 % | 2 | {ranks['uw']:.2f} | – | – |" in uw  # no cost jobs here


def test_single_task_metrics_follow_the_problems_task_order() -> None:
    """Results read from disk come in file-name order (alphabetical tasks); the report keeps
    the problem's task order, as the run that wrote them did (found by a user trial)."""
    shuffled = sorted(_results(), key=lambda r: str(r["job"]["task"]))
    assert list(summarise(shuffled)["stl"]["digits-mtl"]) == [
        "digit",
        "parity",
        "has_loop",
        "denoise",
    ]


def test_the_printed_table_keeps_whole_rows_at_80_columns(tmp_path: Path) -> None:
    """The table printed after a run is the markdown table, one line per row however narrow
    the terminal (it was hard-wrapped mid-row at 80 columns, found by a user trial)."""
    import io

    from rich.console import Console

    config = BenchConfig(problems=["digits-mtl"], methods=list(RUNS), seeds=[0, 1])
    stream = io.StringIO()
    write_reports(config, _results(), tmp_path, Console(file=stream, width=80))
    printed = stream.getvalue().splitlines()
    table = (tmp_path / "table.md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| method | digits-mtl |"))
    assert header in printed and len(header) > 80


def test_one_seed_gives_no_spread(tmp_path: Path) -> None:
    """One seed printed ``+10.5 ± 0.0``, a spread nobody measured (found by a user trial)."""
    config = BenchConfig(problems=["digits-mtl"], methods=list(RUNS), seeds=[0])
    results = [r for r in _results() if r["job"]["seed"] == 0]
    write_reports(config, results, tmp_path)
    table = (tmp_path / "table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| ew |"))
    assert "±" not in row and "| +" in row
