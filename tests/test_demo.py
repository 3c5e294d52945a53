"""`lossrag demo` end to end on a short budget."""

from __future__ import annotations

from typer.testing import CliRunner

import lossrag
from lossrag.cli import app


def test_demo_runs_and_writes_traces_and_plots(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        app,
        [
            "demo",
            "--epochs",
            "2",
            "--methods",
            "lossrag-default,lossrag,ew,famo,mgda",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "digits-mtl test metrics" in result.output and "untrained prior" in result.output
    # at 80 columns: the live losses show (rich took "[ce]" for markup and hid it), names whole
    assert "digit=" in result.output and "[ce]" in result.output and "[l2]" in result.output
    assert "lossrag-default" in result.output and "…" not in result.output
    for method in ("lossrag", "ew", "famo", "mgda"):
        records = lossrag.read_trace(out / f"{method}.jsonl")
        assert len(records) == 2 * 17  # 1077 training samples, batches of 64, 2 epochs
        assert records[-1].method == method and not any(r.skipped for r in records)
        assert (out / f"{method}.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "metrics.png").is_file()


def test_demo_rejects_unknown_method(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--methods", "ew,famoo", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "'famo'" in result.output
