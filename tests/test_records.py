"""Records, JSONL traces and `lossrag inspect`."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import lossrag
from lossrag.cli import app
from lossrag.record import StepRecord, Term

runner = CliRunner()


def _run(digits, tmp_path, policy="uw", steps=12):
    trace = tmp_path / "run.jsonl"
    model = digits.model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    records = []
    with lossrag.wrap(model, digits.tasks, policy, shared=model.trunk, trace=trace) as composer:
        for i in range(steps):
            x, y = digits.batch(i)
            opt.zero_grad()
            records.append(composer.backward(model(x), y))
            opt.step()
    return trace, records


def test_trace_round_trip(digits, tmp_path):
    trace, records = _run(digits, tmp_path)
    lines = trace.read_text().splitlines()
    assert len(lines) == 12 and all(json.loads(line)["method"] == "uw" for line in lines)
    loaded = lossrag.read_trace(trace)
    assert [r.model_dump() for r in loaded] == [r.model_dump() for r in records]
    assert loaded[3].terms[0] == Term(task="digit", loss="ce", weight=loaded[3].terms[0].weight)
    assert set(loaded[0].timings) >= {"losses", "weights", "backward"}


def test_record_task_weights():
    r = StepRecord(
        step=0,
        method="x",
        losses={"a": 1.0, "b": 2.0},
        terms=[
            Term(task="a", loss="l2", weight=0.5),
            Term(task="a", loss="l1", weight=0.25),
            Term(task="b", loss="ce", weight=2.0, active=False),
        ],
    )
    assert r.task_weights() == {"a": 0.75, "b": 0.0}


def test_trace_appends_and_ignores_a_torn_last_line(digits, tmp_path):
    trace, _ = _run(digits, tmp_path, steps=3)
    _run(digits, tmp_path, steps=2)  # same path: appended
    with open(trace, "a") as handle:
        handle.write('{"step": 99, "meth')
    with pytest.warns(UserWarning, match="unfinished line"):
        records = lossrag.read_trace(trace)
    assert [r.step for r in records] == [0, 1, 2, 0, 1]


def test_corrupt_line_is_an_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"step": 0}\nnot json\n')
    with pytest.raises(ValueError, match="line 1"):
        lossrag.read_trace(path)


def test_inspect_table_and_plot(digits, tmp_path):
    trace, records = _run(digits, tmp_path)
    result = runner.invoke(app, ["inspect", str(trace)])
    assert result.exit_code == 0, result.output
    assert "parity w" in result.output and "uw" in result.output
    png = trace.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    result = runner.invoke(
        app,
        ["inspect", str(trace), "--step", "5", "--task", "ink", "--plot", str(tmp_path / "w.png")],
    )
    assert result.exit_code == 0, result.output
    assert "step 5" in result.output and "ink" in result.output and "digit" not in result.output
    weight = records[5].terms[2].weight
    assert f"{weight:.4g}" in result.output
    assert (tmp_path / "w.png").is_file()


def test_inspect_errors(digits, tmp_path):
    trace, _ = _run(digits, tmp_path, steps=2)
    result = runner.invoke(app, ["inspect", str(trace), "--task", "nope"])
    assert result.exit_code == 2 and "not in this trace" in result.output
    result = runner.invoke(app, ["inspect", str(trace), "--step", "50"])
    assert result.exit_code == 2 and "Step 50" in result.output
    result = runner.invoke(app, ["inspect", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_skipped_steps_are_marked(digits, tmp_path):
    trace = tmp_path / "nan.jsonl"
    model = digits.model()
    composer = lossrag.wrap(model, digits.tasks, "ew", trace=trace)
    x, y = digits.batch(0)
    composer.backward(model(x), y)
    composer.backward(model(x), dict(y, ink=y["ink"] * float("nan")))
    composer.close()
    result = runner.invoke(app, ["inspect", str(trace)])
    assert result.exit_code == 0 and "skipped" in result.output


def test_library_cli():
    result = runner.invoke(app, ["library", "list"])
    assert result.exit_code == 0, result.output
    assert len(lossrag.registry.list()) >= 25
    for name in lossrag.registry.list():
        assert name in result.output
    result = runner.invoke(app, ["library", "show", "huber"])
    assert result.exit_code == 0 and "delta" in result.output
    result = runner.invoke(app, ["library", "show", "hubr"])
    assert result.exit_code == 2 and "huber" in result.output
    result = runner.invoke(app, ["library", "list", "--kind", "multilabel"])
    assert "bce" in result.output and "huber" not in result.output


def test_policies_cli():
    result = runner.invoke(app, ["policies", "list"])
    assert result.exit_code == 0 and "policies" in result.output.lower()


def test_appending_after_a_crash_keeps_the_trace_valid(digits, tmp_path):
    trace, _ = _run(digits, tmp_path, steps=2)
    with open(trace, "a") as handle:
        handle.write('{"step": 7, "meth')  # the crash
    _run(digits, tmp_path, steps=2)  # resumed run appends to the same trace
    assert [r.step for r in lossrag.read_trace(trace)] == [0, 1, 0, 1]
