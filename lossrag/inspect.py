"""Rich tables of a trace, for ``lossrag inspect``."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from lossrag.record import StepRecord

__all__ = ["render_step", "render_steps"]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _tasks(records: Sequence[StepRecord], task: str | None) -> list[str]:
    names = list(records[0].losses)
    if task is not None and task not in names:
        raise ValueError(f"Task {task!r} is not in this trace; its tasks are {', '.join(names)}.")
    return [task] if task is not None else names


def render_steps(records: Sequence[StepRecord], task: str | None = None, rows: int = 25) -> Table:
    """One row per step (evenly thinned to about ``rows``; skipped steps always shown): each
    task's loss and weight."""
    names = _tasks(records, task)
    stride = max(1, len(records) // max(rows, 1))
    chosen = [
        r for i, r in enumerate(records) if i % stride == 0 or r.skipped or i == len(records) - 1
    ]
    table = Table(title=f"{records[0].method}: {len(records)} steps (every {stride})")
    table.add_column("step", justify="right")
    for name in names:
        table.add_column(f"{name} loss", justify="right")
        table.add_column(f"{name} w", justify="right")
    table.add_column("note")
    for r in chosen:
        weights = r.task_weights()
        cells = [str(r.step)]
        for name in names:
            cells += [_fmt(r.losses.get(name)), _fmt(weights.get(name))]
        cells.append(f"[red]skipped: {r.reason}[/red]" if r.skipped else "")
        table.add_row(*cells)
    return table


def render_step(records: Sequence[StepRecord], step: int, task: str | None = None) -> Table:
    """Every term of one step: task, loss, weight, gate and score."""
    names = _tasks(records, task)
    found = [r for r in records if r.step == step]
    if not found:
        raise ValueError(
            f"Step {step} is not in this trace (steps {records[0].step}..{records[-1].step})."
        )
    r = found[0]
    status = f"skipped: {r.reason}" if r.skipped else "ok"
    table = Table(title=f"step {r.step} ({r.method}, {status})")
    for col in ("task", "loss", "loss value", "weight", "active", "score"):
        table.add_column(col)
    for term in r.terms:
        if term.task in names:
            table.add_row(
                term.task,
                term.loss,
                _fmt(r.losses.get(term.task)),
                _fmt(term.weight),
                "on" if term.active else "off",
                _fmt(term.score),
            )
    return table
