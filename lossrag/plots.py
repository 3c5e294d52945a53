"""PNG plots of what a run did (matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
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

    Methods without weights (GradDrop, ConFIG) get a note instead of lines. For a retrieval
    policy a second panel shows, per term, the steps at which it was active (its gate).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gated = any(t.note is not None for r in records for t in r.terms)
    if gated:
        fig, (ax, gates_ax) = plt.subplots(
            2, 1, figsize=(8, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
        )
        _plot_gates(gates_ax, records)
    else:
        fig, ax = plt.subplots(figsize=(8, 4.5))
    series: dict[str, tuple[list[int], list[float]]] = {}
    skipped = [r.step for r in records if r.skipped]
    for r in records:
        if r.skipped:
            continue
        for task, w in r.task_weights().items():
            if w is not None:
                xs, ys = series.setdefault(task, ([], []))
                xs.append(r.step)
                ys.append(w)
    for task, (xs, ys) in series.items():
        ax.plot(xs, ys, label=task, linewidth=1.2)
    if skipped:
        ax.plot(skipped, [0.0] * len(skipped), "rx", label="skipped step")
    if not series:
        ax.text(
            0.5,
            0.5,
            "this method produces no per-task weights",
            ha="center",
            transform=ax.transAxes,
        )
    method = records[0].method if records else "?"
    ax.set(ylabel="task weight", title=title or f"weights over time ({method})")
    if not gated:  # with the gates below, the shared axis is labelled there
        ax.set_xlabel("step")
    else:
        ax.tick_params(labelbottom=True)
    if series or skipped:
        ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    out = Path(path)
    atomic_write_bytes(out, _figure_bytes(fig))
    plt.close(fig)
    return out


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
