"""The ``lossrag`` command line: the ``bench`` subcommands and their errors, and ``library list``
at 80 columns."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from lossrag.cli import app
from lossrag.losses import registry

BENCH = {
    "run": ["--problems", "--methods", "--seeds", "--out", "--force", "--jobs", "--toy-steps"],
    "quick": ["--problems", "--methods", "--seeds", "--out", "--force", "--jobs"],
    "resume": ["--out", "--jobs"],
    "report": ["--out"],
    "index": ["--out", "--jobs"],
}


def _text(output: str) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(output.replace("│", " ").split())


def test_bench_lists_its_subcommands():
    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    for command in BENCH:
        assert f"│ {command} " in result.output


@pytest.mark.parametrize("command", sorted(BENCH))
def test_every_bench_subcommand_has_help(command):
    result = CliRunner().invoke(app, ["bench", command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert f"bench {command} [OPTIONS]" in _text(result.output)
    for option in BENCH[command]:
        assert option in result.output


def test_the_old_flags_are_gone_with_a_usage_error():
    result = CliRunner().invoke(app, ["bench", "--quick"])
    assert result.exit_code == 2 and "No such option" in _text(result.output)


def test_resume_and_report_need_a_started_benchmark(tmp_path):
    cli = CliRunner()
    resumed = cli.invoke(app, ["bench", "resume", "--out", str(tmp_path / "none")])
    assert resumed.exit_code == 2
    assert "holds no benchmark to resume (no config.json)" in _text(resumed.output)
    reported = cli.invoke(app, ["bench", "report", "--out", str(tmp_path / "none")])
    assert reported.exit_code == 2 and "no config.json" in _text(reported.output)


def test_resume_refuses_a_corrupt_configuration(tmp_path):
    (tmp_path / "config.json").write_text('{"problems": ["digits-mtl"], "surprise": 1}')
    result = CliRunner().invoke(app, ["bench", "resume", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "surprise" in _text(result.output)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--seeds", "0"], "--seeds must be at least 1, got 0"),
        (["quick", "--methods", "famoo"], "Unknown method 'famoo'. Did you mean 'famo'"),
        (["run", "--problems", "digits-mt"], "Did you mean 'digits-mtl'"),
        (["run", "--jobs", "0"], "'--jobs': Input should be greater than or equal to 1"),
        (
            ["run", "--meta-every", "0"],
            "'--meta-every': Input should be greater than or equal to 1",
        ),
    ],
)
def test_bench_errors_name_the_parameter(tmp_path, args, message):
    result = CliRunner().invoke(app, ["bench", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and message in _text(result.output), result.output
    assert not (tmp_path / "o" / "config.json").exists()  # refused before anything is written


def test_demo_and_inspect_errors_name_the_parameter(tmp_path):
    """No demo of untrained models; inspect names a folder, a binary file and a plot path
    that is not a PNG, and writes nothing."""
    runner = CliRunner()
    result = runner.invoke(app, ["demo", "--epochs", "0", "--out", str(tmp_path / "d")])
    assert (
        result.exit_code == 2
        and "'--epochs': Input should be greater than or equal to 1" in _text(result.output)
    )
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 2 and "is a folder, not a JSONL trace file" in _text(result.output)
    binary = tmp_path / "weights.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    result = runner.invoke(app, ["inspect", str(binary)])
    assert result.exit_code == 2 and "weights.png' is not a text (JSONL) file" in _text(
        result.output
    )
    result = runner.invoke(app, ["inspect", str(binary), "--plot", str(tmp_path / "x.pdf")])
    assert result.exit_code == 2 and "--plot writes a PNG" in _text(result.output)
    assert not (tmp_path / "x.pdf").exists()


def test_library_list_reads_at_80_columns():
    done = subprocess.run(
        [sys.executable, "-c", "from lossrag.cli import main; main()", "library", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in done.stdout  # nothing truncated
    first_words = {line.split()[0] for line in lines if line.startswith("  ") and line.strip()}
    assert set(registry.list("*")) <= first_words
    # one loss, all of its card: family, kinds, per, hyper-parameters, description
    text = _text(done.stdout)
    assert "huber robust · regression · per sample · delta=1 Quadratic for |r|" in text


def test_an_ignored_sigint_stays_ignored():
    """A command started with ``&`` from a script inherits an ignored SIGINT; ``main`` leaves it
    ignored (a Ctrl-C meant for the script's foreground job must not stop it), and otherwise
    installs the handler that stops the workers too."""
    code = """
import signal, sys
from lossrag.cli import main
# as the case says, whatever this test's own process inherited (a test run started with &)
signal.signal(signal.SIGINT, signal.SIG_IGN if sys.argv[1] == "ignored" else signal.SIG_DFL)
sys.argv = ["lossrag", "--help"]
try:
    main()
except SystemExit:
    pass
print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
"""
    for start, ignored in (("ignored", "True"), ("default", "False")):
        done = subprocess.run(
            [sys.executable, "-c", code, start], capture_output=True, text=True, timeout=60
        )
        assert done.stdout.strip().splitlines()[-1] == ignored, done.stderr


def test_library_show_gives_each_range_as_the_errors_do():
    """``library show huber`` said ``range [0, inf]`` while a bad ``delta`` is refused with
    ``delta in (0, inf)`` (found by a user trial)."""
    result = CliRunner().invoke(app, ["library", "show", "huber"])
    assert result.exit_code == 0 and "range (0, inf)" in _text(result.output)
