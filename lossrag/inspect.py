"""Rich tables of a trace, for ``lossrag inspect``."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from lossrag.record import StepRecord, Term

__all__ = [
    "gate_changes",
    "mean_weights",
    "render_changes",
    "render_step",
    "render_steps",
    "render_summary",
]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _tasks(records: Sequence[StepRecord], task: str | None) -> list[str]:
    names = list(records[0].losses)
    if task is not None and task not in names:
        raise ValueError(f"Task {task!r} is not in this trace; its tasks are {', '.join(names)}.")
    return [task] if task is not None else names


def render_steps(records: Sequence[StepRecord], task: str | None = None, rows: int = 25) -> Table:
    """One row per step (evenly thinned to about ``rows``; skipped steps and steps where a term
    was switched on or off always shown): each task's loss (up to four tasks) and weight."""
    names = _tasks(records, task)
    changes: dict[int, list[str]] = {}
    for step, term in gate_changes(records):
        if term.task in names:
            changes.setdefault(step, []).append(f"{term.task} {term.loss} {term.note}")
    stride = max(1, len(records) // max(rows, 1))
    chosen = [
        r
        for i, r in enumerate(records)
        if i % stride == 0 or r.skipped or i == len(records) - 1 or r.step in changes
    ]
    with_loss = len(names) <= 4  # wider tables do not fit a terminal: weights only
    table = Table(title=f"{records[0].method}: {len(records)} steps (every {stride})")
    table.add_column("step", justify="right")
    for name in names:
        if with_loss:
            table.add_column(f"{name} loss", justify="right")
        table.add_column(f"{name} w", justify="right")
    table.add_column("note")
    for r in chosen:
        weights = r.task_weights()
        cells = [str(r.step)]
        for name in names:
            cells += [_fmt(r.losses.get(name))] if with_loss else []
            cells.append(_fmt(weights.get(name)))
        note = f"[red]skipped: {r.reason}[/red]" if r.skipped else (r.reason or "")
        cells.append("; ".join(n for n in [note, *changes.get(r.step, [])] if n))
        table.add_row(*cells)
    return table


def render_summary(records: Sequence[StepRecord], task: str | None = None) -> Table:
    """One row per task: its loss at the first and last step, its mean, lowest and last weight
    over the run, and its active terms at the end."""
    names = _tasks(records, task)
    kept = [r for r in records if not r.skipped] or list(records)
    means = mean_weights(records)
    table = Table(title=f"per task over {len(records)} steps ({records[0].method})")
    for col in ("task", "first loss", "last loss", "mean w", "min w", "last w", "active terms"):
        table.add_column(col, justify="left" if col in ("task", "active terms") else "right")
    for name in names:
        weights = [w for r in kept if (w := r.task_weights().get(name)) is not None]
        active = [t.loss for t in kept[-1].terms if t.task == name and t.active]
        table.add_row(
            name,
            _fmt(kept[0].losses.get(name)),
            _fmt(kept[-1].losses.get(name)),
            _fmt(means.get(name)),
            _fmt(min(weights) if weights else None),
            _fmt(weights[-1] if weights else None),
            ", ".join(active),
        )
    return table


def mean_weights(records: Sequence[StepRecord]) -> dict[str, float | None]:
    """Each task's weight averaged over the steps that were not skipped (``None`` if the method
    gives none)."""
    sums: dict[str, float | None] = {}
    count = 0
    for r in records:
        if r.skipped:
            continue
        count += 1
        for task, w in r.task_weights().items():
            prev = sums.get(task, 0.0)
            sums[task] = None if w is None or prev is None else prev + w
    return {t: None if v is None else v / max(count, 1) for t, v in sums.items()}


def gate_changes(records: Sequence[StepRecord]) -> list[tuple[int, Term]]:
    """Every term whose gate changed, with the step (a retrieval policy's ``on:``/``off:``)."""
    return [
        (r.step, t)
        for r in records
        for t in r.terms
        if t.note is not None and t.note.startswith(("on:", "off:"))
    ]


def render_changes(records: Sequence[StepRecord], task: str | None = None) -> Table:
    """The gate changes of a trace: step, task, loss, on/off and why."""
    names = _tasks(records, task)
    table = Table(title="terms switched on or off")
    for col in ("step", "task", "loss", "change"):
        table.add_column(col)
    for step, t in gate_changes(records):
        if t.task in names:
            table.add_row(str(step), t.task, t.loss, t.note or "")
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
    for col in ("task", "loss", "loss value", "weight", "active", "score", "note"):
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
                term.note or "",
            )
    return table
