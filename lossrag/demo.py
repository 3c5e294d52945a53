"""``lossrag demo``: several weighting methods side by side on scikit-learn's digits."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Column, Table

from lossrag.plots import plot_metrics, plot_weights
from lossrag.policy import LossRAG
from lossrag.record import StepRecord, read_trace
from lossrag.weighting import make_method

__all__ = ["run_demo"]


def run_demo(methods: list[str], epochs: int, seed: int, out: Path, console: Console) -> None:
    """Train ``digits-mtl`` once per method, show live weights, write traces and plots, and print
    the test metrics side by side."""
    from lossrag.bench.fit import fit
    from lossrag.bench.problems import get_problem

    if not methods:
        raise ValueError("demo: --methods is empty; name at least one method, e.g. 'ew'.")
    # unknown names fail before any training, with suggestions
    policies = {m: make_method(m) for m in methods}
    torch.set_num_threads(1)
    problem = get_problem("digits-mtl")
    out.mkdir(parents=True, exist_ok=True)
    console.print(
        f"[bold]digits-mtl[/bold]: tasks {', '.join(t.name for t in problem.tasks)}; "
        f"{epochs} epochs per method, seed {seed}. Every method runs through lossrag.wrap; "
        "'lossrag-default' is the shipped meta-trained policy, 'lossrag' the retrieval policy "
        "with its untrained prior. Live: each task's weight and, for the LossRAG policies, the "
        "losses it trains with (a retrieved loss beside or instead of the task's own)."
    )
    n_train = problem.load(seed).train.x.shape[0]
    steps = epochs * math.ceil(n_train / problem.budget.batch_size)
    results = {}
    width = max(map(len, methods))
    with Progress(  # at 80 columns the live weights fold; the names and times are never cut
        TextColumn(f"{{task.fields[method]:>{width}}}", table_column=Column(no_wrap=True)),
        BarColumn(bar_width=10),
        TextColumn("{task.completed}/{task.total}", table_column=Column(no_wrap=True)),
        TimeRemainingColumn(table_column=Column(no_wrap=True, min_width=7)),
        TextColumn("{task.fields[weights]}", markup=False, table_column=Column(overflow="fold")),
        console=console,
    ) as progress:
        for method in methods:
            bar = progress.add_task("", total=steps, method=method, weights="")
            trace = out / f"{method}.jsonl"
            trace.unlink(missing_ok=True)

            retrieval = isinstance(policies[method], LossRAG)

            def show(record: StepRecord, bar: TaskID = bar, retrieval: bool = retrieval) -> None:
                progress.update(bar, advance=1, weights=_describe(record, retrieval))

            results[method] = fit(
                problem, policies[method], seed, epochs=epochs, trace=trace, on_step=show
            )
            plot_weights(read_trace(trace), out / f"{method}.png", f"digits-mtl: {method} weights")
    table = Table(title=f"digits-mtl test metrics (seed {seed})", box=box.SIMPLE_HEAD)
    table.add_column("method", no_wrap=True)
    for t in problem.tasks:
        arrow = "↑" if t.higher_is_better else "↓"
        table.add_column(f"{t.name} {t.metric} {arrow}", justify="right")
    table.add_column("cpu s", justify="right")
    for method, r in results.items():
        table.add_row(
            method, *(f"{r.metrics[t.name]:.4f}" for t in problem.tasks), f"{r.cpu_s:.1f}"
        )
    console.print(table)
    higher = {t.name: t.higher_is_better for t in problem.tasks}
    png = plot_metrics(
        {m: r.metrics for m, r in results.items()},
        higher,
        out / "metrics.png",
        f"digits-mtl test metrics, {epochs} epochs, seed {seed}",
    )
    console.print(f"traces and weight plots: {out}/<method>.jsonl|.png; metrics plot: {png}")
    console.print("look inside a trace with: lossrag inspect " + str(out / f"{methods[0]}.jsonl"))


def _describe(record: StepRecord, losses: bool) -> str:
    """Each task's weight and, with ``losses``, the losses it is trained with at this step."""
    parts = []
    for task, weight in record.task_weights().items():
        text = f"{task}={'-' if weight is None else f'{weight:.2f}'}"
        if losses:
            text += f"[{'+'.join(t.loss for t in record.terms if t.task == task and t.active)}]"
        parts.append(text)
    return " ".join(parts)
