"""PNG plots of what a run did (matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lossrag._util import atomic_write_bytes
from lossrag.record import StepRecord

__all__ = ["plot_metrics", "plot_weights"]


def _figure_bytes(fig: object) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    return buffer.getvalue()


def plot_weights(
    records: Sequence[StepRecord], path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Plot each task's weight over the steps (skipped steps marked) and write a PNG to ``path``.

    Methods without weights (GradDrop, ConFIG) get a note instead of lines. For a method that
    divides the losses by their scales (the retrieval policies) a second panel shows each task's
    effective multiplier on its raw loss, log scale: what the task gets, where the weight alone
    can mislead (a user trial's noise task had a mean weight above the 10-class task's and a
    multiplier less than half of it). For a retrieval policy a last panel shows, per term, the
    steps at which it was active (its gate).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    kept = [r for r in records if not r.skipped]
    weights = _series(kept, StepRecord.task_weights)
    multipliers = _series(kept, StepRecord.task_multipliers)
    scaled = bool(multipliers) and multipliers != weights
    gated = any(t.note is not None for r in records for t in r.terms)
    heights = [3, *([2] if scaled else []), *([2] if gated else [])]
    colours = {task: f"C{i}" for i, task in enumerate(dict.fromkeys([*weights, *multipliers]))}
    fig, axes = plt.subplots(
        len(heights),
        1,
        figsize=(8, 4.5 + 2.5 * (len(heights) - 1)),
        sharex=True,
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
        layout="constrained",
    )
    ax, *below = axes[:, 0]
    for task, (xs, ys) in weights.items():
        ax.plot(xs, ys, label=task, color=colours[task], linewidth=1.2)
    skipped = [r.step for r in records if r.skipped]
    if skipped:
        ax.plot(skipped, [0.0] * len(skipped), "rx", label="skipped step")
    if not weights:
        ax.text(
            0.5,
            0.5,
            "this method produces no per-task weights",
            ha="center",
            transform=ax.transAxes,
        )
    method = records[0].method if records else "?"
    ax.set(ylabel="task weight", title=title or f"weights over time ({method})")
    if weights or skipped:
        ax.legend(fontsize=8, ncol=2)
    if scaled:
        scale_ax = below.pop(0)
        for task, (xs, ys) in multipliers.items():  # a term switched off (0) is left out
            positive = [y if y > 0 else float("nan") for y in ys]
            scale_ax.plot(xs, positive, label=task, color=colours[task], linewidth=1.2)
        scale_ax.grid(alpha=0.3)
        scale_ax.set(
            yscale="log",
            ylabel="multiplier",
            title="effective multiplier on each task's raw loss (weight / loss scale)",
        )
        # plain numbers (after the scale, which resets them): 1, 10 and, between, 2 and 5
        scale_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        scale_ax.yaxis.set_minor_formatter(
            FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else "")
        )
    if gated:
        _plot_gates(below.pop(0), records)
    ax.grid(alpha=0.3)
    for panel in axes[:, 0]:
        panel.tick_params(labelbottom=True)
    axes[-1, 0].set_xlabel("step")
    out = Path(path)
    atomic_write_bytes(out, _figure_bytes(fig))
    plt.close(fig)
    return out


def _series(
    records: Sequence[StepRecord], per_task: Callable[[StepRecord], dict[str, float | None]]
) -> dict[str, tuple[list[int], list[float]]]:
    """Task -> the steps and values of ``per_task`` where it has one."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for r in records:
        for task, value in per_task(r).items():
            if value is not None:
                xs, ys = series.setdefault(task, ([], []))
                xs.append(r.step)
                ys.append(value)
    return series


def _plot_gates(ax: Any, records: Sequence[StepRecord]) -> None:
    """One row per (task, loss) term, a mark at every step where it was active."""
    rows: dict[str, int] = {}
    xs: list[int] = []
    ys: list[int] = []
    for r in records:
        for t in r.terms:
            if t.active:
                label = f"{t.task}: {t.loss}"
                xs.append(r.step)
                ys.append(rows.setdefault(label, len(rows)))
    ax.scatter(xs, ys, marker="|", s=12, linewidths=0.8)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=7)
    ax.set(xlabel="step", title="gates: steps at which each term was active")
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")


def plot_metrics(
    table: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, bool],
    path: str | os.PathLike[str],
    title: str = "test metrics",
) -> Path:
    """Bar chart of per-task metrics (one group per task, one bar per method) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(table)
    tasks = list(next(iter(table.values()))) if table else []
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(3.2 * max(len(tasks), 1), 3.4))
    axes_list = list(axes) if len(tasks) > 1 else [axes]
    for ax, task in zip(axes_list, tasks, strict=False):
        values = [table[m][task] for m in methods]
        ax.bar(range(len(methods)), values, color=[f"C{i}" for i in range(len(methods))])
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
        arrow = "higher is better" if higher_is_better.get(task, False) else "lower is better"
        ax.set_title(f"{task}\n({arrow})", fontsize=9)
        lo, hi = min(values), max(values)
        pad = (hi - lo) * 0.5 or abs(hi) * 0.05 or 1.0
        ax.set_ylim(max(lo - pad, 0.0) if lo >= 0 else lo - pad, hi + pad)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    out = Path(path)
    atomic_write_bytes(out, _figure_bytes(fig))
    plt.close(fig)
    return out
