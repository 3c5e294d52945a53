"""PNG plots of what a run did (matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

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

    Methods without weights (GradDrop, ConFIG) get a note instead of lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    ax.set(xlabel="step", ylabel="task weight", title=title or f"weights over time ({method})")
    if series or skipped:
        ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    out = Path(path)
    atomic_write_bytes(out, _figure_bytes(fig))
    plt.close(fig)
    return out


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
