"""Records, JSONL traces and `lossrag inspect`."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import lossrag
from lossrag.cli import app
from lossrag.record import StepRecord, Term, TraceWriter

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


def test_trace_rotates_an_existing_run_and_ignores_a_torn_last_line(digits, tmp_path):
    trace, _ = _run(digits, tmp_path, steps=3)
    with pytest.warns(UserWarning, match=r"run\.jsonl\.1"):
        _run(digits, tmp_path, steps=2)  # same path: the first run is moved aside
    with pytest.warns(UserWarning, match=r"run\.jsonl\.2"):
        _run(digits, tmp_path, steps=4)
    assert [r.step for r in lossrag.read_trace(trace)] == [0, 1, 2, 3]
    assert [r.step for r in lossrag.read_trace(tmp_path / "run.jsonl.1")] == [0, 1, 2]
    assert [r.step for r in lossrag.read_trace(tmp_path / "run.jsonl.2")] == [0, 1]
    with open(trace, "a") as handle:
        handle.write('{"step": 99, "meth')
    with pytest.warns(UserWarning, match="unfinished line"):
        records = lossrag.read_trace(trace)
    assert [r.step for r in records] == [0, 1, 2, 3]


def test_an_empty_trace_file_is_reused_without_rotation(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    writer = TraceWriter(path)
    writer.write(StepRecord(step=0, method="ew", losses={}, terms=[]))
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl"]


def _line(step, method="ew"):
    return StepRecord(step=step, method=method, losses={"a": 1.0}, terms=[]).model_dump_json()


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([_line(0), _line(1), _line(0), _line(1)], r"line 3: the step counter restarts"),
        ([_line(0), _line(1), _line(2, "famo")], r"line 3: the method changes"),
    ],
)
def test_a_trace_mixing_runs_is_refused(tmp_path, lines, message):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        lossrag.read_trace(path)
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2 and "line 3" in " ".join(result.output.split())


def test_old_traces_without_the_new_fields_are_read(tmp_path):
    path = tmp_path / "old.jsonl"
    old = {
        "step": 0,
        "method": "uw",
        "losses": {"a": 1.0},
        "terms": [{"task": "a", "loss": "l2", "weight": 0.5}],
    }
    path.write_text(json.dumps(old) + "\n")
    (record,) = lossrag.read_trace(path)
    assert record.terms[0].multiplier is None
    assert record.targets == {} and record.version is None


def test_corrupt_line_is_an_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"step": 0}\nnot json\n')
    with pytest.raises(ValueError, match="line 1"):
        lossrag.read_trace(path)


def test_inspect_table_and_plot(digits, tmp_path):
    trace, records = _run(digits, tmp_path)
    result = runner.invoke(app, ["inspect", str(trace)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80 and "uw" in result.output
    # two-line headers: the tasks, then what each column of a task holds
    tasks = next(i for i, line in enumerate(lines) if line.split()[:1] == ["digit"])
    assert lines[tasks].split() == ["digit", "digit", "parity", "parity", "ink", "ink"]
    assert lines[tasks + 1].split() == ["step", "loss", "w", "loss", "w", "loss", "w", "note"]
    png = trace.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    result = runner.invoke(
        app,
        ["inspect", str(trace), "--step", "5", "--task", "ink", "--plot", str(tmp_path / "w.png")],
    )
    assert result.exit_code == 0, result.output
    assert "step 5" in result.output and "ink" in result.output and "digit" not in result.output
    weight = records[5].terms[2].weight
    assert f"{weight:.3g}" in result.output
    assert (tmp_path / "w.png").is_file()
    # one task's plot goes beside the whole run's, not over it
    before = png.read_bytes()
    result = runner.invoke(app, ["inspect", str(trace), "--task", "ink"])
    assert result.exit_code == 0 and trace.with_name("run-ink.png").is_file()
    assert png.read_bytes() == before and "target normaliser" not in result.output


def test_inspect_errors(digits, tmp_path):
    trace, _ = _run(digits, tmp_path, steps=2)
    result = runner.invoke(app, ["inspect", str(trace), "--task", "nope"])
    assert result.exit_code == 2 and "not in this trace" in result.output
    result = runner.invoke(app, ["inspect", str(trace), "--task", "ikn"])  # a typo: the closest
    assert result.exit_code == 2 and "Did you mean 'ink'?" in " ".join(result.output.split())
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
    result = runner.invoke(app, ["library", "list", "regression"])  # a kind, not a name
    assert result.exit_code == 0 and "--kind regression" in result.output


def test_policies_cli():
    result = runner.invoke(app, ["policies", "list"])
    assert result.exit_code == 0 and "policies" in result.output.lower()


def test_a_new_run_after_a_crash_starts_a_valid_trace(digits, tmp_path):
    trace, _ = _run(digits, tmp_path, steps=2)
    with open(trace, "a") as handle:
        handle.write('{"step": 7, "meth')  # the crash
    with pytest.warns(UserWarning, match="moved to"):
        _run(digits, tmp_path, steps=2)  # the script run again
    assert [r.step for r in lossrag.read_trace(trace)] == [0, 1]
    with pytest.warns(UserWarning, match="unfinished line"):
        assert [r.step for r in lossrag.read_trace(tmp_path / "run.jsonl.1")] == [0, 1]


def _rec(step, weights, method="uw", **extra):
    terms = [
        Term(task=t, loss="l2", weight=w, multiplier=None if w is None else w / 4)
        for t, w in weights.items()
    ]
    return StepRecord(
        step=step, method=method, losses=dict.fromkeys(weights, 1.0), terms=terms, **extra
    )


def test_mean_weight_lies_between_min_and_max_when_a_task_is_missing_from_steps():
    from lossrag.inspect import mean_weights

    # task b is listed at two steps of four (e.g. a term set that changed): dividing by all the
    # steps put its mean (0.5) below its lowest weight (1.0)
    records = [
        _rec(0, {"a": 1.0, "b": 1.0}),
        _rec(1, {"a": 3.0}),
        _rec(2, {"a": 2.0, "b": 1.0}),
        _rec(3, {"a": 2.0}),
    ]
    assert mean_weights(records) == {"a": 2.0, "b": 1.0}
    records.append(_rec(4, {"a": 100.0, "b": 100.0}, skipped=True, reason="nan"))
    assert mean_weights(records) == {"a": 2.0, "b": 1.0}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.none() | st.floats(0, 10)), min_size=1, max_size=20))
def test_summary_min_le_mean_le_max(rows):
    from rich.console import Console

    from lossrag.inspect import mean_weights, render_summary

    records = [
        _rec(i, {"a": a} if b is None else {"a": a, "b": b}) for i, (a, b) in enumerate(rows)
    ]
    for task, mean in mean_weights(records).items():
        ws = [w for r in records if (w := r.task_weights().get(task)) is not None]
        assert min(ws) - 1e-9 <= mean <= max(ws) + 1e-9
    console = Console(width=200, record=True)
    console.print(render_summary(records))
    text = console.export_text()
    assert "min w" in text and "max w" in text and "last mult" in text


def test_inspect_shows_multipliers_targets_context_and_the_card_version(tmp_path):
    path = tmp_path / "policy.jsonl"
    ctx = {
        "a": {"log_loss_ratio": -0.5, "slope": 0.125},
        "b": {"log_loss_ratio": 0.25, "slope": 0.0},
    }
    tgt = {"a": {"mu": 1000.0, "sigma": 25.0}}
    records = [
        _rec(0, {"a": 2.0, "b": 1.0}, method="default@1.3", context=ctx, targets=tgt),
        _rec(
            1,
            {"a": 2.0, "b": 1.0},
            method="default@1.3",
            targets={"a": {"mu": 1001.0, "sigma": 26.0}},
        ),
    ]
    path.write_text("".join(r.model_dump_json() + "\n" for r in records))
    result = runner.invoke(app, ["inspect", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "default (policy 1.3)" in out
    assert "last mult" in out and "0.5" in out  # 2.0 / 4
    assert "target normaliser" in out and "1001" in out and "sigma" in out
    assert "context at refresh steps" in out and "log_loss_ratio" in out and "-0.5" in out
    step = runner.invoke(app, ["inspect", str(path), "--step", "0"], env={"COLUMNS": "200"})
    assert step.exit_code == 0 and "mult" in step.output and "0.125" in step.output


def test_inspect_reads_at_80_columns(tmp_path):
    """Loss names, utilities and the reasons of gate moves are not cut at 80 columns: long
    notes are numbered under the table, the summary says when a task's loss changed meaning."""
    note = "on: mean utility 2.68 over 1 update, lower bound > 0"
    on = [
        ("welsch(scale=0.05)", 2.681, 1, 2.681, note),
        ("tukey(c=0.5)", 2.273, 3, 2.641, "active"),
    ]
    terms = [
        Term(task="y", loss="l2", weight=0.0, active=False, utility=-2.273, note="off: gone"),
        Term(task="y", loss="gaussian_nll(sigma=0.75)", weight=0.0, active=False, utility=-0.9),
        *(
            Term(task="y", loss=loss, weight=0.5, utility=u, seen=n, mean_utility=m, note=why)
            for loss, u, n, m, why in on
        ),
    ]
    first = StepRecord(
        step=0, method="default", losses={"y": 16.37}, terms=[Term(task="y", loss="l2", weight=1.0)]
    )
    last = StepRecord(step=600, method="default", losses={"y": 0.0135}, terms=terms)
    path = tmp_path / "t.jsonl"
    path.write_text("".join(r.model_dump_json() + "\n" for r in (first, last)))
    env = {"COLUMNS": "80"}
    plot = ["--plot", str(tmp_path / "w.png")]
    step = runner.invoke(app, ["inspect", str(path), "--step", "600", *plot], env=env)
    assert step.exit_code == 0, step.output
    assert "…" not in step.output and "welsch(scale=0.05)" in step.output
    assert "2.68/1" in step.output and f"[1] {note}" in step.output
    # a loss name is not broken inside its parameters, at a step or among the candidates
    candidates = runner.invoke(app, ["inspect", str(path), "--candidates", *plot], env=env)
    for shown in (step, candidates):
        assert "gaussian_nll(sigma=0.75)" in shown.output
        assert max(len(line) for line in shown.output.splitlines()) <= 80
    summary = runner.invoke(app, ["inspect", str(path), *plot], env=env)
    assert "…" not in summary.output
    names = ["digit", "parity", "has_loop", "denoise"]  # the demo's four tasks: weights only
    many = [
        StepRecord(
            step=i,
            method="uw",
            losses=dict.fromkeys(names, 0.693147),
            terms=[Term(task=n, loss="ce", weight=0.844444) for n in names],
        )
        for i in range(3)
    ]
    path.write_text("".join(r.model_dump_json() + "\n" for r in many))
    steps = runner.invoke(app, ["inspect", str(path), *plot], env=env)
    assert steps.exit_code == 0 and "…" not in steps.output
    header = next(i for i, line in enumerate(steps.output.splitlines()) if "has_loop" in line)
    assert steps.output.splitlines()[header + 1].split() == ["step", "w", "w", "w", "w", "note"]
    assert "(losses not shown at 80 columns: a wider terminal or --task shows them)" in " ".join(
        steps.output.split()
    )
    assert "its first loss is of l2, its last of welsch(scale=0.05)" in " ".join(
        summary.output.split()
    )


def test_inspect_fits_the_terminal(tmp_path):
    """A step's table at a retrieval: whole at 200 columns; at 80, loss names kept whole (not
    broken inside their parameters) and the notes numbered under the table so that it fits;
    at 50, number columns left out from the right, and a line says which."""
    losses = ["label_smoothing(eps=0.02)", "student_t_nll(nu=100, sigma=2)", "poly1(eps=-1)"]
    task = "ink_density"
    terms = [Term(task=task, loss="l2", weight=1.0, multiplier=0.245, utility=0.0, note="active")]
    terms += [
        Term(task=task, loss=loss, weight=0.0, active=False, utility=-0.911, note="retrieved")
        for loss in losses
    ]
    record = StepRecord(step=200, method="default", losses={task: 1.35}, terms=terms)
    path = tmp_path / "t.jsonl"
    path.write_text(record.model_dump_json() + "\n")
    plot = ["--plot", str(tmp_path / "w.png")]
    shown = {
        c: runner.invoke(app, ["inspect", str(path), "--step", "200", *plot], env={"COLUMNS": c})
        for c in ("200", "80", "50")
    }
    assert all(result.exit_code == 0 for result in shown.values())
    lines = {c: result.output.splitlines() for c, result in shown.items()}
    assert any(loss in line and "retrieved" in line for line in lines["200"] for loss in losses)
    assert all(any(loss in line for line in lines["80"]) for loss in losses[::2])
    assert max(map(len, lines["80"])) <= 80 and "[2] retrieved" in lines["80"]
    assert not any("not shown" in line for line in [*lines["200"], *lines["80"]])
    assert max(map(len, lines["50"])) <= 50
    said = " ".join(shown["50"].output.split())
    assert "(not shown at 50 columns: mult, gate, utility, mean/n; a wider terminal shows" in said


def test_inspect_target_statistics_read_at_80_columns(tmp_path):
    """The target normaliser's table at 80 columns: a scalar target, a 2-D one and a 40-D one
    in a few columns, nothing cut (eleven columns of flags and per-dimension values were cut
    to ``36…``, found by a user trial)."""
    wide = {f"mu[{i}]": 0.5 + i for i in range(40)} | {f"sigma[{i}]": 0.12 for i in range(40)}
    targets = {
        "mass": {"located": 1.0, "fallback": 0.0, "skipped": 0.0, "mu": 365.589, "sigma": 100.56},
        "pos": {"located": 1.0, "fallback": 0.0, "skipped": 2.0}
        | {"mu[0]": 7.49, "mu[1]": 8.113, "sigma[0]": 2.353, "sigma[1]": 2.353},
        "denoise": {"located": 0.0, "fallback": 1.0, "skipped": 0.0} | wide,
    }
    records = [_rec(i, {"mass": 1.0, "pos": 1.0, "denoise": 1.0}, targets=targets) for i in (0, 9)]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(r.model_dump_json() + "\n" for r in records))
    out = runner.invoke(app, ["inspect", str(path)], env={"COLUMNS": "80"}).output
    assert "…" not in out.split("target normaliser")[-1].replace("0.5…39.5", "")
    assert "365.6" in out and "7.49, 8.113" in out and "0.5…39.5 (40)" in out
    assert "0.12 (all 40)" in out
    words = " ".join(out.split())
    assert "2 non-finite batches skipped" in words and "loss only" in out
    assert "no variance yet: σ = max(1, |μ|)" in words


def test_run_title_reads_the_version_field():
    from lossrag.inspect import run_title

    assert run_title(_rec(0, {"a": 1.0}, method="default", version="2.0")) == "default (policy 2.0)"
    assert run_title(_rec(0, {"a": 1.0}, method="famo")) == "famo"


def test_registry_accepts_the_entry_ids_traces_print():
    from lossrag.embed import variant_id
    from lossrag.losses import LossRegistry

    reg = lossrag.registry
    assert reg.spec("huber(delta=0.5)") is reg.spec("huber")
    assert LossRegistry.parse_id("huber(delta=0.5)") == ("huber", {"delta": 0.5})
    assert reg.parse_id("l2") == ("l2", {})
    for name, params in reg.variants():
        assert reg.parse_id(variant_id(name, params)) == (name, dict(params))
    assert "huber(delta=0.5)" in reg and "huber(width=1)" not in reg
    assert reg.create("huber(delta=0.5)").params["delta"] == 0.5
    with pytest.raises(ValueError, match="Did you mean 'huber'"):
        reg.spec("hubr(delta=0.5)")
    with pytest.raises(ValueError, match="no hyper-parameter width"):
        reg.spec("huber(width=1)")
    with pytest.raises(ValueError, match="malformed"):
        reg.spec("huber(delta=0.5")
    result = runner.invoke(app, ["library", "show", "huber(delta=0.5)"])
    assert result.exit_code == 0 and "delta" in result.output


def test_append_continues_a_resumed_run_after_a_torn_line(tmp_path):
    path = tmp_path / "resumed.jsonl"
    path.write_text(_line(0) + "\n" + _line(1) + "\n" + '{"step": 2, "meth')  # the crash
    writer = TraceWriter(path, append=True)
    writer.write(StepRecord.model_validate_json(_line(2)))
    writer.close()
    assert [r.step for r in lossrag.read_trace(path)] == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resumed.jsonl"]


def test_wrap_trace_append_continues_the_run_of_a_resumed_composer(digits, tmp_path):
    """Resuming from a checkpoint with the same trace path moved the first part to
    ``.jsonl.1`` (one run in two files); ``trace_append=True`` continues the file (found by a
    user trial), without the steps the run made after the checkpoint (found by a review)."""
    path = tmp_path / "run.jsonl"
    model = digits.model(0)
    composer = lossrag.wrap(model, digits.tasks, "uw", trace=path, trace_every=4)
    for i in range(5):
        x, y = digits.batch(i)
        composer.backward(model(x), y)
    state = composer.state_dict()
    for i in range(5, 7):  # steps past the checkpoint, before the run stopped
        x, y = digits.batch(i)
        composer.backward(model(x), y)
    composer.close()
    resumed = lossrag.wrap(model, digits.tasks, "uw", trace=path, trace_append=True)
    resumed.load_state_dict(state)
    for i in range(5, 8):
        x, y = digits.batch(i)
        resumed.backward(model(x), y)
    resumed.close()
    assert [r.step for r in lossrag.read_trace(path)] == list(range(8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.jsonl"]
    with pytest.raises(ValueError, match="trace_append must be a valid boolean, got 'yes'"):
        lossrag.wrap(model, digits.tasks, "uw", trace=path, trace_append="yes")


def test_a_step_shows_each_task_loss_once():
    """The record holds one loss per task; ``--step`` showed it on every candidate row of the
    task as if it were that candidate's (found by a user trial)."""
    from rich.console import Console

    from lossrag.inspect import render_step

    record = StepRecord(
        step=0,
        method="default",
        losses={"a": 0.123456},
        terms=[
            Term(task="a", loss="l2", weight=1.0),
            Term(task="a", loss="huber(delta=1)", weight=0.0, active=False),
        ],
    )
    console = Console(width=200, record=True)
    console.print(render_step([record], 0))
    out = console.export_text()
    assert "task loss" in out and out.count("0.1235") == 1


def test_a_trace_path_that_is_not_a_trace_is_refused_and_left_alone(tmp_path):
    """A user trial's ``trace="out"`` moved its working folder to ``out.1``, and a CSV given as
    the trace was moved aside as "a run": a folder, a non-trace file and ``"."`` are refused,
    naming the path, and nothing on disk changes."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep").write_text("mine")
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=r"'.*out' is a folder; give a file in it"):
        TraceWriter(folder)
    for append in (False, True):
        with pytest.raises(ValueError, match=r"data\.csv' holds a file that is not a LossRAG"):
            TraceWriter(data, append=append)
    with pytest.raises(ValueError, match=r"'\.' is a folder"):
        TraceWriter(".")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert data.read_text() == "a,b\n1,2\n"
    old = tmp_path / "old.jsonl"  # json.dumps's spacing: still a trace, moved aside
    old.write_text(json.dumps({"step": 0, "method": "ew", "losses": {}, "terms": []}) + "\n")
    with pytest.warns(UserWarning, match=r"old\.jsonl\.1"):
        TraceWriter(old).close()


def test_a_trace_path_that_cannot_be_read_is_a_value_error_naming_it(tmp_path, monkeypatch):
    """A folder the process may not enter (``PermissionError`` from the path checks, as a user
    without rights sees it) is the same ``ValueError`` as any unwritable path: under DDP rank 0
    shares it with the other ranks, which would otherwise wait for it."""

    def refused(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(tmp_path), "is_dir", refused)
    with pytest.raises(ValueError, match=r"locked.*cannot be written: .*Permission denied"):
        TraceWriter(tmp_path / "locked" / "t.jsonl")


def test_the_context_tables_show_at_most_eight_refreshes_and_the_last():
    """Twelve refreshes showed all twelve while the help said "at most 8" (a user trial)."""
    from rich.console import Console

    from lossrag.inspect import render_context

    ctx = {"a": {"log_loss_ratio": -0.5}}
    records = [_rec(50 * i, {"a": 1.0}, context=ctx) for i in range(12)]
    console = Console(record=True, width=200)
    console.print(render_context(records, rows=8))
    # steps 0, 100, ..., 500 and the last, 550
    said = " ".join(console.export_text().split())
    assert "context at refresh steps (7 of 12 refreshes)" in said


def test_a_term_switched_on_at_this_step_leaves_its_task_multiplier_measured():
    """A term switched on at a refresh trains from the next step and has no multiplier yet; its
    task's multiplier was ``None`` at that step (a gap in the plots; a user trial)."""
    record = StepRecord(
        step=200,
        method="default",
        losses={"ink": 1.0, "c": 1.0},
        terms=[
            Term(task="ink", loss="l2", weight=0.4, multiplier=0.387),
            Term(task="ink", loss="tukey(c=0.5)", weight=0.5, multiplier=None),
            Term(task="c", loss="ce", weight=1.0, multiplier=None),
            Term(task="c", loss="focal", weight=0.0, active=False),
        ],
    )
    assert record.task_multipliers() == {"ink": 0.387, "c": None}
