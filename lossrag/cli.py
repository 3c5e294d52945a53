"""The ``lossrag`` command line: ``demo``, ``inspect``, ``library``, ``policies``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import tomllib
import typer
from rich.console import Console
from rich.table import Table

from lossrag._util import data_dir

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="LossRAG: loss weighting for MTL."
)
library_app = typer.Typer(no_args_is_help=True, help="The loss library.")
policies_app = typer.Typer(no_args_is_help=True, help="Shipped policies.")
app.add_typer(library_app, name="library")
app.add_typer(policies_app, name="policies")
console = Console()

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``lossrag`` console script."""
    app()


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code=2)


@library_app.command("list")
def library_list(
    pattern: Annotated[str, typer.Argument(help="fnmatch pattern, e.g. 'focal*'")] = "*",
    kind: Annotated[str | None, typer.Option(help="only losses for this task kind")] = None,
) -> None:
    """One row per loss of the library."""
    from lossrag.losses import registry

    try:
        names = registry.list(pattern, kind=kind)
    except ValueError as err:
        _fail(str(err))
    table = Table(title=f"loss library ({len(names)} losses)")
    table.add_column("name", no_wrap=True)
    for col in ("family", "kinds", "hyper-parameters", "per", "description"):
        table.add_column(col)
    for name in names:
        spec = registry.spec(name)
        params = ", ".join(f"{k}={v.default:g}" for k, v in spec.params.items())
        table.add_row(
            name,
            spec.family,
            ",".join(spec.kinds),
            params or "-",
            "batch" if spec.per_batch else "sample",
            spec.description,
        )
    console.print(table)


@library_app.command("show")
def library_show(name: Annotated[str, typer.Argument(help="loss name")]) -> None:
    """The card of one loss."""
    from lossrag.losses import registry

    try:
        spec = registry.spec(name)
    except ValueError as err:
        _fail(str(err))
    table = Table(title=f"loss {spec.name}", show_header=False)
    for key, value in spec.model_dump().items():
        if key == "params":
            value = (
                "\n".join(
                    f"{k}: default {p['default']:g}, range [{p['low']:g}, {p['high']:g}], "
                    f"grid {p['grid']}"
                    for k, p in value.items()
                )
                or "-"
            )
        table.add_row(key, str(value))
    console.print(table)


@policies_app.command("list")
def policies_list() -> None:
    """The policies shipped in ``policies/``, with their cards."""
    folders = sorted(p for p in data_dir("policies").iterdir() if p.is_dir())
    if not folders:
        console.print(
            "No trained LossRAG policy is shipped in this release (policies/ is empty). "
            "Baselines are available by name: see `lossrag.weighting.available()`."
        )
        return
    table = Table(title="policies")
    for col in ("name", "version", "description"):
        table.add_column(col)
    for folder in folders:
        card = folder / "card.toml"
        info = tomllib.loads(card.read_text()) if card.is_file() else {}
        table.add_row(folder.name, str(info.get("version", "?")), str(info.get("description", "")))
    console.print(table)


@app.command()
def inspect(
    trace: Annotated[Path, typer.Argument(help="a JSONL trace written by wrap(..., trace=)")],
    step: Annotated[int | None, typer.Option(help="show every term of this step")] = None,
    task: Annotated[str | None, typer.Option(help="only this task")] = None,
    rows: Annotated[int, typer.Option(help="at most this many steps in the table")] = 25,
    plot: Annotated[
        Path | None, typer.Option(help="where to write the PNG (default: beside)")
    ] = None,
) -> None:
    """Per-step table of losses and weights, and a PNG of the weights over time."""
    from lossrag.inspect import render_step, render_steps
    from lossrag.plots import plot_weights
    from lossrag.record import read_trace

    try:
        records = read_trace(trace)
    except (OSError, ValueError) as err:
        _fail(str(err))
    if not records:
        _fail(f"Trace {str(trace)!r} holds no records.")
    try:
        if step is not None:
            console.print(render_step(records, step, task))
        else:
            console.print(render_steps(records, task, rows))
    except ValueError as err:
        _fail(str(err))
    target = plot or trace.with_suffix(".png")
    plot_weights(records, target)
    console.print(f"weights over time: {target}")


#: The methods of the benchmark protocol's table.
PROTOCOL_METHODS = "ew,uw,dwa,famo,rlw,gradnorm,mgda,pcgrad,cagrad,nashmtl,imtlg,upgrad,alignedmtl"


@app.command()
def bench(
    problems: Annotated[str | None, typer.Option(help="comma-separated problems")] = None,
    methods: Annotated[str | None, typer.Option(help="comma-separated methods")] = None,
    seeds: Annotated[int | None, typer.Option(help="number of seeds (0, 1, ...)")] = None,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("lossrag-bench"),
    quick: Annotated[bool, typer.Option(help="every baseline on digits-mtl, one seed")] = False,
    resume: Annotated[bool, typer.Option(help="continue an interrupted run in --out")] = False,
    force: Annotated[bool, typer.Option(help="discard what --out holds")] = False,
    jobs: Annotated[int, typer.Option(help="parallel processes (one thread each)")] = 2,
    toy_steps: Annotated[int, typer.Option(help="toy2d Adam steps, every method")] = 50000,
    report: Annotated[
        bool, typer.Option(help="only write the reports of --out from its finished problems")
    ] = False,
) -> None:
    """Run methods × problems × seeds with single-task baselines; write results.json, table.md
    and plots."""
    from lossrag.bench.problems import list_problems
    from lossrag.bench.runner import QUICK_METHODS, BenchConfig, report_finished, run_bench

    if report:
        try:
            done = report_finished(out, console)
        except ValueError as err:
            _fail(str(err))
        console.print(f"reported the finished problems: {', '.join(done)}")
        return

    def split(text: str) -> list[str]:
        return [part.strip() for part in text.split(",") if part.strip()]

    if quick:
        chosen_problems = split(problems) if problems else ["digits-mtl"]
        chosen_methods = split(methods) if methods else list(QUICK_METHODS)
        n_seeds = seeds or 1
    else:
        chosen_problems = split(problems) if problems else [*list_problems(), "toy2d"]
        chosen_methods = split(methods or PROTOCOL_METHODS)
        n_seeds = seeds or 3
    try:
        config = BenchConfig(
            problems=chosen_problems,
            methods=chosen_methods,
            seeds=list(range(n_seeds)),
            toy_steps=toy_steps,
        )
        run_bench(config, out, jobs=jobs, resume=resume, force=force, console=console)
    except ValueError as err:
        _fail(str(err))


@app.command()
def demo(
    epochs: Annotated[int, typer.Option(help="training epochs per method")] = 30,
    methods: Annotated[
        str, typer.Option(help="comma-separated methods")
    ] = "ew,uw,dwa,famo,gradnorm,mgda,pcgrad,upgrad",
    seed: Annotated[int, typer.Option(help="seed of data, model and methods")] = 0,
    out: Annotated[Path, typer.Option(help="folder for traces and plots")] = Path("lossrag-demo"),
) -> None:
    """Train a small multi-task model on scikit-learn's digits with several weighting methods."""
    from lossrag.demo import run_demo

    try:
        run_demo([m.strip() for m in methods.split(",") if m.strip()], epochs, seed, out, console)
    except ValueError as err:
        _fail(str(err))
