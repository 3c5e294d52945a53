"""The ``lossrag`` command line: ``demo``, ``bench``, ``train``, ``inspect``, ``library``,
``policies``."""

from __future__ import annotations

import multiprocessing
import re
import shlex
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from lossrag.bench.runner import BenchConfig
    from lossrag.losses import LossSpec

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    help="LossRAG: loss weighting for MTL.",
)
library_app = typer.Typer(no_args_is_help=True, help="The loss library.")
policies_app = typer.Typer(no_args_is_help=True, help="Shipped policies.")
bench_app = typer.Typer(
    no_args_is_help=True, help="Benchmarks: methods × problems × seeds, and the loss index."
)
app.add_typer(library_app, name="library")
app.add_typer(policies_app, name="policies")
app.add_typer(bench_app, name="bench")
console = Console()

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``lossrag`` console script. SIGINT and SIGTERM stop a command, its
    worker processes included: sent to this process alone (``kill``, ``kill -INT``, a
    supervisor's stop) they do not reach the workers, which would work through every queued job
    or wait for work forever. A SIGINT the shell set to be ignored (a command started with ``&``
    from a script) stays ignored."""
    signal.signal(signal.SIGTERM, _stop)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _stop)
    app()


def _stop(_signum: int, _frame: object) -> None:
    for child in multiprocessing.active_children():
        child.terminate()
    raise KeyboardInterrupt


def _fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}")
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
    if not names:
        from lossrag.tasks import KINDS

        hint = f"; for a task kind: --kind {pattern}" if pattern in KINDS else ""
        console.print(
            f"No loss name matches {pattern!r} (a pattern of names, e.g. 'focal*'{hint})."
        )
        return
    table = Table(title=f"loss library ({len(names)} losses)", box=box.SIMPLE_HEAD)
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("family · kinds · per · hyper-parameters; description")
    for name in names:
        table.add_row(name, _loss_card(registry.spec(name)))
    console.print(table)


def _loss_card(spec: LossSpec) -> Text:
    """One loss in two parts, so that the list reads at 80 columns: its facts, dimmed, and its
    description below."""
    params = ", ".join(f"{k}={v.default:g}" for k, v in spec.params.items())
    facts = [spec.family, ",".join(spec.kinds), "per batch" if spec.per_batch else "per sample"]
    return Text.assemble(
        (" · ".join([*facts, params] if params else facts), "dim"), "\n", spec.description
    )


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
                    f"{k}: default {p['default']:g}, range {spec.params[k].range_text}, "
                    f"grid {p['grid']}"
                    for k, p in value.items()
                )
                or "-"
            )
        table.add_row(key, str(value))
    console.print(table)


@library_app.command("build-index")
def library_build_index(
    out: Annotated[Path | None, typer.Option(help="index file (default: the cache)")] = None,
    density: Annotated[
        int, typer.Option(help="points per grid interval (1: the cards' grids)")
    ] = 1,
) -> None:
    """Embed every variant of the library and write the FAISS loss index."""
    import time

    from rich.progress import Progress

    from lossrag._util import cache_dir
    from lossrag.index import LossIndex, library_fingerprint
    from lossrag.losses import registry

    if density < 1:
        _fail(f"--density must be >= 1, got {density}.")
    total = len(registry.variants(density=density))
    start = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("embedding losses", total=total)
        index = LossIndex.build(density=density, progress=lambda n: progress.advance(bar, n))
    target = out or cache_dir() / f"index-{library_fingerprint(density=density)}.lossidx"
    index.save(target)
    console.print(
        f"{len(index)} entries ({', '.join(index.kinds())}) embedded and indexed in "
        f"{time.perf_counter() - start:.1f} s: {target}"
    )


@policies_app.command("list")
def policies_list() -> None:
    """The policies shipped in ``policies/``: name, version, training and description, one line
    each (``lossrag policies show NAME`` shows a whole card)."""
    from lossrag.policy.store import read_card, shipped_policies

    folders = shipped_policies()
    if not folders:
        console.print(
            "No trained LossRAG policy is shipped in this release (policies/ is empty). "
            "Baselines are available by name: see `lossrag.weighting.available()`."
        )
        return
    table = Table(title="policies")
    for col in ("name", "version", "trained on", "time", "meta-objective"):
        table.add_column(col, overflow="fold", no_wrap=col == "version")
    described = []
    for folder in folders:
        try:
            card = read_card(folder)
        except (OSError, ValueError) as err:
            table.add_row(folder.name, "?", "", "", "")
            described.append(f"{escape(folder.name)}: [red]unusable: {escape(str(err))}[/red]")
            continue
        curve = card.training.get("objective", [])
        objective = f"{curve[-1]['log_ratio_vs_ew']:+.4f}" if curve else ""
        table.add_row(
            card.name,
            card.version or "?",
            f"{card.training.get('problems', '?')} generated problems",
            f"{card.training.get('elapsed_s', 0) / 60:.0f} min",
            objective,
        )
        described.append(escape(f"{card.name}: {card.description}"))
    console.print(table)
    for line in described:
        console.print(line)
    console.print("`lossrag policies show NAME` shows a policy's whole card.")


@policies_app.command("show")
def policies_show(
    policy: Annotated[str, typer.Argument(help="a shipped policy's name or a policy folder")],
) -> None:
    """A policy's card: versions, recipe, training (meta-objective, correction), trained
    parameters and the benchmark results it records; its files' checksums are verified."""
    from lossrag.policy.cardview import render_card
    from lossrag.policy.store import policy_folder, read_card

    try:
        folder = policy_folder(policy)
        card = read_card(folder)
    except (OSError, ValueError) as err:
        _fail(str(err))
    console.print(render_card(card, folder))


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="a TOML recipe, e.g. training/default.toml")],
    out: Annotated[Path, typer.Option(help="the policy folder to write")],
    work: Annotated[
        Path | None,
        typer.Option(help="checkpoints, log and plot (default: lossrag-train/<name of --out>)"),
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue from the checkpoint in --work")] = False,
    force: Annotated[
        bool, typer.Option(help="replace the policy already at --out when training ends")
    ] = False,
) -> None:
    """Meta-train a policy over generated problems: evolution strategies over whole runs, then
    the correction Δφ by Reptile over the online loop."""
    from lossrag.policy.lossrag import REFRESH_EVERY, RETRIEVE_EVERY
    from lossrag.train import load_recipe
    from lossrag.train import train as run_training

    try:
        parsed = load_recipe(recipe)
    except (OSError, ValueError) as err:
        _fail(str(err))
    folder = work or Path("lossrag-train") / out.name
    gated = REFRESH_EVERY * RETRIEVE_EVERY  # the second retrieval's step
    if parsed.problems.steps[1] <= gated:
        console.print(
            f"[bold yellow]warning:[/] problems.steps {list(parsed.problems.steps)}: hardly a run "
            f"goes past step {gated} (lengths are rounded to whole epochs), the second "
            "retrieval, where the gates first move, so the switching parameters get little or "
            "no signal; the shipped recipe draws 200 to 500 steps."
        )
    try:
        summary = run_training(parsed, out, folder, resume=resume, replace=force, console=console)
    except (OSError, ValueError) as err:
        _fail(str(err))
    except KeyboardInterrupt:
        saved = any((folder / f).exists() for f in ("checkpoint.json", "checkpoint.prev.json"))
        again = (
            f"lossrag train {shlex.quote(str(recipe))} --out {shlex.quote(str(out))} --work "
            f"{shlex.quote(str(folder))}{' --resume' if saved else ''}{' --force' if force else ''}"
        )
        console.print(
            f"interrupted: continue with {again} (from the last checkpoint)"
            if saved
            else f"interrupted before the first checkpoint: start again with {again}",
            highlight=False,
            markup=False,
        )
        raise typer.Exit(code=130) from None
    curve = summary["objective"]
    console.print(
        f"policy {out}: {summary['problems']} problems in {summary['elapsed_s'] / 60:.1f} min; "
        f"meta-objective {curve[0]['log_ratio_vs_ew']:+.4f} -> {curve[-1]['log_ratio_vs_ew']:+.4f} "
        f"(log-ratio against {summary['reference']}, on held-out problems; log and plot in "
        f"{folder})"
    )
    start, end = curve[0]["log_ratio_vs_ew"], curve[-1]["log_ratio_vs_ew"]
    if end < start:
        console.print(
            f"[bold yellow]warning:[/] the held-out meta-objective fell ({start:+.4f} at the "
            f"start, {end:+.4f} now): the written policy scores below the one training started "
            "from on its own held-out problems. Train with more generations or a larger "
            "population (ES is noisy at small ones), or keep the policy you started from."
        )
    online = summary["online"]
    if online["rounds"]:
        from lossrag.policy.cardview import gain_note

        console.print(
            f"online phase: {online['problems']} problems; held-out meta-objective with the "
            f"trained correction {online['with_correction']:+.4f}, prior alone "
            f"{online['prior_only']:+.4f}{gain_note(online)}: "
            + ("the correction ships" if online["shipped"] else "the correction stays 0")
        )


@app.command()
def inspect(
    trace: Annotated[Path, typer.Argument(help="a JSONL trace written by wrap(..., trace=)")],
    step: Annotated[int | None, typer.Option(help="show every term of this step")] = None,
    task: Annotated[str | None, typer.Option(help="only this task")] = None,
    rows: Annotated[
        int,
        typer.Option(
            help="about this many steps in the table, evenly spread, and the last (in the "
            "context tables at most 8 refresh steps and the last)"
        ),
    ] = 25,
    candidates: Annotated[
        bool, typer.Option(help="every candidate at every retrieval: utility, evidence, gate")
    ] = False,
    plot: Annotated[
        Path | None, typer.Option(help="where to write the PNG, a .png file (default: beside)")
    ] = None,
) -> None:
    """Per-step table of losses and weights (with each task's mean weight, and the terms a
    retrieval policy switched on or off and why), and a PNG of the weights (and gates) over
    time. ``--candidates``: every candidate a retrieval policy measured, at each retrieval."""
    from lossrag.inspect import (
        gate_changes,
        render_changes,
        render_retrievals,
        render_step,
        render_steps,
        render_summary,
        retrievals,
    )
    from lossrag.plots import plot_weights
    from lossrag.record import read_trace

    if plot is not None and plot.suffix.lower() != ".png":
        _fail(f"--plot writes a PNG: give a path ending in .png, got {str(plot)!r}.")
    try:
        records = read_trace(trace)
    except (OSError, ValueError) as err:
        _fail(str(err))
    if not records:
        _fail(f"Trace {str(trace)!r} holds no records.")
    try:
        if step is not None:
            console.print(render_step(records, step, task, console.width))
        elif candidates:
            if not retrievals(records):
                _fail("This trace lists no retrieved candidates (not a retrieval policy's).")
            console.print(render_retrievals(records, task, console.width))
        else:
            console.print(render_steps(records, task, rows, console.width))
            console.print(render_summary(records, task, console.width, min(rows, 8)))
            if gate_changes(records):
                console.print(render_changes(records, task, console.width))
    except ValueError as err:
        _fail(str(err))
    target = plot or trace.with_suffix(".png")
    if task is not None:  # the plot of that task's terms alone, beside the whole run's
        records = [
            r.model_copy(update={"terms": [t for t in r.terms if t.task == task]}) for r in records
        ]
        safe = re.sub(r"[^\w.-]", "_", task)
        target = plot or trace.with_name(f"{trace.stem}-{safe}.png")
    plot_weights(records, target)
    console.print(f"weights over time: {target}")


#: The methods of the benchmark protocol's table.
PROTOCOL_METHODS = "ew,uw,dwa,famo,rlw,gradnorm,mgda,pcgrad,cagrad,nashmtl,imtlg,upgrad,alignedmtl"

_Out = Annotated[Path, typer.Option(help="output folder")]
_Jobs = Annotated[int, typer.Option(min=1, help="parallel processes (one thread each)")]
_Force = Annotated[bool, typer.Option(help="discard what --out holds")]
_ToySteps = Annotated[int, typer.Option(help="toy2d Adam steps, every method")]
_Oracle = Annotated[
    Path | None,
    typer.Option(help="an oracle.json of `lossrag bench oracle`, for the <method>@oracle rows"),
]


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _start_bench(
    problems: list[str],
    methods: list[str],
    seeds: int,
    out: Path,
    jobs: int,
    force: bool,
    toy_steps: int,
    oracle: Path | None,
    meta_every: int | None = None,
) -> None:
    """Run a new benchmark in ``out`` (``bench run`` and ``bench quick``)."""
    from lossrag.bench.oracle import load_oracle
    from lossrag.bench.runner import BenchConfig

    if seeds < 1:
        _fail(f"--seeds must be at least 1, got {seeds}.")
    try:
        config = BenchConfig(
            problems=problems,
            methods=methods,
            seeds=list(range(seeds)),
            toy_steps=toy_steps,
            oracle=load_oracle(oracle).choices() if oracle else {},
            meta_every=meta_every,
        )
        _run_bench(config, out, jobs, force=force)
    except ValueError as err:
        _fail(str(err))


def _run_bench(config: BenchConfig, out: Path, jobs: int, **options: bool) -> None:
    """:func:`~lossrag.bench.runner.run_bench`; interrupted, say how to continue (exit 130)."""
    from lossrag.bench.runner import run_bench

    try:
        run_bench(config, out, jobs=jobs, console=console, **options)
    except KeyboardInterrupt:
        again = f"lossrag bench resume --out {shlex.quote(str(out))} --jobs {jobs}"
        console.print(
            f"interrupted: continue with {again} (finished runs are kept)",
            highlight=False,
            markup=False,
        )
        raise typer.Exit(code=130) from None


@bench_app.command("run")
def bench_run(
    problems: Annotated[
        str | None, typer.Option(help="comma-separated problems (default: all and toy2d)")
    ] = None,
    methods: Annotated[str, typer.Option(help="comma-separated methods")] = PROTOCOL_METHODS,
    seeds: Annotated[int, typer.Option(help="number of seeds (0, 1, ...)")] = 3,
    out: _Out = Path("lossrag-bench"),
    force: _Force = False,
    jobs: _Jobs = 2,
    toy_steps: _ToySteps = 50000,
    oracle: _Oracle = None,
    meta_every: Annotated[
        int | None,
        typer.Option(
            min=1, help="steps between online meta-steps of the query methods (default: 5)"
        ),
    ] = None,
) -> None:
    """Run methods × problems × seeds with single-task baselines; write results.json, table.md
    and plots. Default: the protocol's 13 baselines on every problem, 3 seeds. With --oracle,
    methods named `<method>@oracle` train with the oracle's losses."""
    from lossrag.bench.problems import list_problems

    chosen = _split(problems) if problems else [*list_problems(), "toy2d"]
    _start_bench(chosen, _split(methods), seeds, out, jobs, force, toy_steps, oracle, meta_every)


@bench_app.command("quick")
def bench_quick(
    problems: Annotated[str, typer.Option(help="comma-separated problems")] = "digits-mtl",
    methods: Annotated[
        str | None, typer.Option(help="comma-separated methods (default: every method)")
    ] = None,
    seeds: Annotated[int, typer.Option(help="number of seeds (0, 1, ...)")] = 1,
    out: _Out = Path("lossrag-bench"),
    force: _Force = False,
    jobs: _Jobs = 2,
    toy_steps: _ToySteps = 50000,
    oracle: _Oracle = None,
) -> None:
    """Every registered method on digits-mtl, one seed (about a minute on two cores)."""
    from lossrag.bench.runner import QUICK_METHODS

    chosen = _split(methods) if methods else list(QUICK_METHODS)
    _start_bench(_split(problems), chosen, seeds, out, jobs, force, toy_steps, oracle)


@bench_app.command("oracle")
def bench_oracle(
    problems: Annotated[str, typer.Option(help="comma-separated problems")],
    seeds: Annotated[int, typer.Option(help="number of seeds (0, 1, ...)")] = 1,
    out: _Out = Path("lossrag-oracle"),
    epochs: Annotated[
        int | None, typer.Option(min=1, help="budget override (default: each problem's)")
    ] = None,
    force: Annotated[bool, typer.Option(help="rerun the sweeps --out holds")] = False,
    jobs: _Jobs = 2,
) -> None:
    """The loss oracle: per scored task, single-task runs with every library loss of its kind
    (card defaults), scored on the validation split; writes --out/oracle.json with the best."""
    from lossrag.bench.oracle import run_oracle

    if seeds < 1:
        _fail(f"--seeds must be at least 1, got {seeds}.")
    try:
        oracle = run_oracle(
            _split(problems),
            list(range(seeds)),
            out,
            jobs=jobs,
            epochs=epochs,
            force=force,
            console=console,
        )
    except ValueError as err:
        _fail(str(err))
    table = Table(title=f"loss oracle (validation, seeds 0..{seeds - 1})")
    for col in ("problem", "task", "metric", "natural", "value", "oracle", "value"):
        table.add_column(col)
    for name, tasks in oracle.problems.items():
        for task, o in tasks.items():
            natural, chosen = o.candidates[o.natural], o.candidates[o.chosen.id]
            table.add_row(
                name,
                task,
                o.metric,
                o.natural,
                "–" if natural is None else f"{natural:.4g}",
                o.chosen.id,
                "–" if chosen is None else f"{chosen:.4g}",
            )
    console.print(table)
    console.print(f"written: {out / 'oracle.json'}")


@bench_app.command("resume")
def bench_resume(out: _Out = Path("lossrag-bench"), jobs: _Jobs = 2) -> None:
    """Continue the interrupted benchmark in --out with the configuration it was started with
    (runs that crashed run again), then write its reports."""
    from lossrag.bench.runner import BenchConfig

    saved = out / "config.json"
    if not saved.is_file():
        _fail(f"{out} holds no benchmark to resume (no config.json); start one: lossrag bench run.")
    try:
        config = BenchConfig.model_validate_json(saved.read_text())
        _run_bench(config, out, jobs, resume=True)
    except (OSError, ValueError) as err:
        _fail(str(err))


@bench_app.command("report")
def bench_report(out: _Out = Path("lossrag-bench")) -> None:
    """Write the reports of --out from its finished problems; runs nothing."""
    from lossrag.bench.runner import report_finished

    try:
        done = report_finished(out, console)
    except (OSError, ValueError) as err:
        _fail(str(err))
    console.print(f"reported the finished problems: {', '.join(done)}")


@bench_app.command("index")
def bench_index(out: _Out = Path("lossrag-bench"), jobs: _Jobs = 2) -> None:
    """Measure the loss index: embedding 10⁴ variants, search at 10⁵ entries; writes
    index.json."""
    _bench_index(out, jobs)


@app.command()
def demo(
    epochs: Annotated[int, typer.Option(min=1, help="training epochs per method")] = 30,
    methods: Annotated[
        str, typer.Option(help="comma-separated methods")
    ] = "lossrag-default,lossrag,ew,uw,dwa,famo,gradnorm,mgda,pcgrad,upgrad",
    seed: Annotated[int, typer.Option(help="seed of data, model and methods")] = 0,
    out: Annotated[Path, typer.Option(help="folder for traces and plots")] = Path("lossrag-demo"),
) -> None:
    """Train a small multi-task model on scikit-learn's digits with several weighting methods."""
    from lossrag.demo import run_demo

    try:
        run_demo([m.strip() for m in methods.split(",") if m.strip()], epochs, seed, out, console)
    except ValueError as err:
        _fail(str(err))


def _bench_index(out: Path, jobs: int) -> None:
    import json

    from rich.progress import Progress

    from lossrag._util import atomic_write_text
    from lossrag.bench.indexbench import bench_index

    with Progress(console=console, transient=True) as progress:
        bars: dict[str, Any] = {}

        def advance(phase: str, done: int, total: int) -> None:
            if phase not in bars:
                bars[phase] = progress.add_task(f"embedding ({phase})", total=total)
            progress.update(bars[phase], completed=done)

        result = bench_index(jobs=jobs, progress=advance)
    atomic_write_text(out / "index.json", json.dumps(result, indent=2))
    build, search = result["build"], result["search"]
    console.print(
        f"embedded and indexed {build['entries']} variants (density {build['density']}) in "
        f"{build['seconds']:.1f} s with {jobs} processes"
    )
    table = Table(title=f"search at {search['entries']} entries, k={result['k']}, one thread")
    for col in ("kind", "entries", "index", "µs / query", f"recall@{result['k']}"):
        table.add_column(col)
    for row in search["kinds"]:
        table.add_row(
            row["kind"],
            str(row["entries"]),
            row["index"],
            f"{row['latency_us']:.1f}",
            f"{row['recall_at_k']:.3f}",
        )
    console.print(table)
    console.print(f"written: {out / 'index.json'}")
