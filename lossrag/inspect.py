"""Rich tables of a trace, for ``lossrag inspect``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from rich import box
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from lossrag._util import suggest
from lossrag.record import StepRecord, Term

__all__ = [
    "gate_changes",
    "mean_weights",
    "render_changes",
    "render_context",
    "render_retrievals",
    "render_step",
    "render_steps",
    "render_summary",
    "render_targets",
    "retrievals",
    "run_title",
]


#: Longest note kept in a table's cell; longer ones become numbered notes under the table.
_SHORT_NOTE = 12
#: Feature columns per context table (more go in the next one): it reads at 80 columns.
_FEATURES_PER_TABLE = 3
#: Widest a text column is kept before it wraps (a loss name with its parameters).
_TEXT_WIDTH = 18
#: Widest a word of a text column (a loss name up to a space) is kept whole.
_WORD_WIDTH = 26


def _fmt(value: float | None, digits: int = 4) -> str:
    """``value`` to ``digits`` significant digits (``-`` for none; ``0``, not ``-0``)."""
    return "-" if value is None else f"{value + 0.0:.{digits}g}"


def _evidence(term: Term) -> list[str]:
    """A candidate's utility at this retrieval and its gate's evidence, ``mean/n`` (3 digits)."""
    mean = "-" if term.mean_utility is None else f"{_fmt(term.mean_utility, 3)}/{term.seen}"
    return [_fmt(term.utility, 3), mean]


def _widths(
    columns: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[str], narrow: bool
) -> list[int]:
    """Each column's width as :func:`_table` draws it: its widest header line or cell, a text
    column (``left``) when ``narrow`` only up to :data:`_TEXT_WIDTH` or up to its longest word
    (at most :data:`_WORD_WIDTH`), wrapping at spaces beyond."""
    widths = []
    for i, col in enumerate(columns):
        cells = [row[i] for row in rows]
        width = max(map(len, cells), default=0)
        if narrow and col in left:
            word = max((len(w) for cell in cells for w in cell.split()), default=0)
            width = min(width, max(_TEXT_WIDTH, min(word, _WORD_WIDTH)))
        widths.append(max(width, *(len(line) for line in col.split("\n"))))
    return widths


def _span(widths: Sequence[int]) -> int:
    """The width of a table of columns ``widths`` wide (two characters between columns)."""
    return sum(widths) + 2 * len(widths)


def _table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    left: Sequence[str] = (),
    width: int = 80,
) -> Group:
    """A table for a terminal ``width`` columns wide: light rules, numbers (right-aligned) never
    wrapped or cut, text columns (``left``) as wide as their text or, where the table would be
    wider than the terminal, narrowed as :func:`_widths` says (a word such as
    ``label_smoothing(eps=0.02)`` kept whole) and widened again, left to right, as far as the
    width allows; where even the narrowed table does not fit, number columns are left out from
    the right, and a line under the table names them."""
    natural = _widths(columns, rows, left, narrow=False)
    widths = _widths(columns, rows, left, narrow=True)
    shown = list(range(len(columns)))
    numbers = [i for i in shown if columns[i] not in left]
    while _span([widths[i] for i in shown]) > width and len(numbers) > 1:
        shown.remove(numbers.pop())
    room = width - _span([widths[i] for i in shown])
    for i in shown:  # the text columns widen back, left to right, as far as there is room
        grow = max(0, min(room, natural[i] - widths[i]))
        widths[i], room = widths[i] + grow, room - grow
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for i in shown:
        if columns[i] in left:
            table.add_column(columns[i], overflow="fold", min_width=widths[i], max_width=widths[i])
        else:
            table.add_column(columns[i], justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*(escape(row[i]) for i in shown))
    left_out = [columns[i].replace("\n", " ") for i in range(len(columns)) if i not in shown]
    if left_out:
        said = f"(not shown at {width} columns: {', '.join(left_out)}; a wider terminal shows them)"
        return Group(table, Text(said))
    return Group(table)


class _Notes:
    """Notes too long for a cell, numbered (one number per distinct note) and listed under the
    table."""

    def __init__(self, short: int = _SHORT_NOTE) -> None:
        self.short = short
        self.numbers: dict[str, int] = {}

    def cell(self, note: str | None) -> str:
        """The note itself when short, else its number (the note goes to :meth:`listed`)."""
        if not note or len(note) <= self.short:
            return note or ""
        return f"[{self.numbers.setdefault(note, len(self.numbers) + 1)}]"

    def listed(self, table: Group) -> Group:
        """The table followed by its numbered notes."""
        return Group(table, *(Text(f"[{n}] {note}") for note, n in self.numbers.items()))


def _noted(
    columns: Sequence[str],
    rows: Callable[[_Notes], list[list[str]]],
    left: Sequence[str],
    width: int,
) -> tuple[_Notes, list[list[str]]]:
    """``rows`` (whose last cell is a note) with short notes in their cells, or, where that
    table would be wider than ``width``, every note numbered under the table."""
    notes = _Notes()
    cells = rows(notes)
    if _span(_widths(columns, cells, left, narrow=True)) > width:
        notes = _Notes(short=0)
        cells = rows(notes)
    return notes, cells


def run_title(record: StepRecord) -> str:
    """How a run is named in titles: its method, and the version of the trained policy behind
    it (``default@1.2`` or ``version="1.2"`` -> ``default (policy 1.2)``)."""
    name, _, from_method = record.method.partition("@")
    version = record.version or from_method
    return f"{name} (policy {version})" if version else name


def _tasks(records: Sequence[StepRecord], task: str | None) -> list[str]:
    names = list(records[0].losses)
    if task is not None and task not in names:
        close = suggest(task, names)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"Task {task!r} is not in this trace.{hint} Its tasks are {', '.join(names)}."
        )
    return [task] if task is not None else names


def render_steps(
    records: Sequence[StepRecord], task: str | None = None, rows: int = 25, width: int = 80
) -> Group:
    """One row per step (evenly thinned to about ``rows``; skipped steps and steps where a term
    was switched on or off always shown): each task's weight, and its loss where a terminal of
    ``width`` columns has room for both (long notes numbered under the table)."""
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

    def table(with_loss: bool) -> tuple[list[str], _Notes, list[list[str]]]:
        # headers of two lines: the task, then "loss" or "w"
        columns = ["step"]
        for name in names:
            columns += [f"{name}\nloss", f"{name}\nw"] if with_loss else [f"{name}\nw"]
        notes, cells = _Notes(), []
        for r in chosen:
            weights = r.task_weights()
            row = [str(r.step)]
            for name in names:
                row += [_fmt(r.losses.get(name))] if with_loss else []
                row.append(_fmt(weights.get(name)))
            note = f"skipped: {r.reason}" if r.skipped else (r.reason or "")
            row.append(notes.cell("; ".join(n for n in [note, *changes.get(r.step, [])] if n)))
            cells.append(row)
        return [*columns, "note"], notes, cells

    columns, notes, cells = table(with_loss=True)
    with_loss = _span(_widths(columns, cells, ["note"], narrow=True)) <= width
    if not with_loss:
        columns, notes, cells = table(with_loss=False)
    title = f"{run_title(records[0])}: {len(records)} steps (every {stride})"
    shown = notes.listed(_table(title, columns, cells, left=["note"], width=width))
    if with_loss:
        return shown
    how = "a wider terminal" if task is not None else "a wider terminal or --task"
    said = f"(losses not shown at {width} columns: {how} shows them)"
    return Group(shown, Text(said))


def render_summary(
    records: Sequence[StepRecord], task: str | None = None, width: int = 80, refreshes: int = 8
) -> Group:
    """One row per task: its loss at the first and last step, its mean, lowest, highest and last
    weight over the steps that were not skipped and its last effective multiplier (when
    recorded); under it, its active terms at the end; followed by the target normaliser's statistics
    (:func:`render_targets`) and the context features at about ``refreshes`` refresh steps
    (:func:`render_context`) when the trace holds them."""
    names = _tasks(records, task)
    kept = [r for r in records if not r.skipped] or list(records)
    means = mean_weights(kept)
    multipliers = kept[-1].task_multipliers()
    with_mult = any(t.multiplier is not None for r in kept for t in r.terms)
    title = f"per task over {len(records)} steps ({run_title(records[0])})"
    columns = ["task", "first loss", "last loss", "mean w", "min w", "max w", "last w"]
    columns += ["last mult"] if with_mult else []
    rows, ends, said = [], [], []
    for name in names:
        weights = [w for r in kept if (w := r.task_weights().get(name)) is not None]
        first, active = (
            [t.loss for t in r.terms if t.task == name and t.active] for r in (kept[0], kept[-1])
        )
        last = _fmt(kept[-1].losses.get(name))
        if first[:1] != active[:1]:  # the recorded loss is the first active term's
            last += "*"
            said.append(
                f"* {name}: its first loss is of {first[0] if first else '-'}, its last of "
                f"{active[0] if active else '-'} (the first active term's loss is recorded)."
            )
        cells = [
            name,
            _fmt(kept[0].losses.get(name)),
            last,
            _fmt(means.get(name)),
            _fmt(min(weights) if weights else None),
            _fmt(max(weights) if weights else None),
            _fmt(weights[-1] if weights else None),
        ]
        cells += [_fmt(multipliers.get(name))] if with_mult else []
        rows.append(cells)
        ends.append(f"{name}: {', '.join(active) or '-'} active at the end")
    table = _table(title, columns, rows, left=["task"], width=width)
    normalised = [n for n in names if any(n in r.targets for r in records)]
    if normalised:
        said.append(
            f"The losses of {', '.join(normalised)} are in their targets' standard units "
            "(normalize_targets; the target normaliser's statistics below)."
        )
    parts: list[Group | Text] = [table, *(Text(line) for line in [*ends, *said])]
    if any(r.targets for r in records):
        parts.append(render_targets(records, task, width))
    if any(r.context for r in records):
        parts.append(render_context(records, task, rows=refreshes, width=width))
    return Group(*parts)


def render_targets(
    records: Sequence[StepRecord], task: str | None = None, width: int = 80
) -> Group:
    """The target normaliser's statistics per regression task at the first and the last step
    that recorded them, one row each: ``μ`` and ``σ`` (per dimension up to three, else their
    range and count) and how the task is normalised (nothing for a trace, or a task, without
    them)."""
    names = _tasks(records, task)
    with_targets = [r for r in records if any(name in r.targets for name in names)]
    if not with_targets:
        return Group()
    ends = with_targets[:1] if len(with_targets) == 1 else [with_targets[0], with_targets[-1]]
    rows = [
        [name, str(r.step), *_moments(r.targets[name]), _how(r.targets[name])]
        for name in names
        for r in ends
        if name in r.targets
    ]
    columns = ["task", "step", "mu", "sigma", "normalised"]
    left = ["task", "mu", "sigma", "normalised"]
    return _table("target normaliser", columns, rows, left=left, width=width)


def _moments(stats: Mapping[str, float]) -> list[str]:
    """``μ`` and ``σ`` of one task's statistics: the value, up to three per-dimension values,
    or for more ``low…high (n)`` (``value (all n)`` when they are equal)."""
    out = []
    for name in ("mu", "sigma"):
        values = [v for k, v in stats.items() if k == name or k.startswith(f"{name}[")]
        if not values:
            out.append("-")
        elif len(values) <= 3:
            out.append(", ".join(_fmt(v) for v in values))
        elif min(values) == max(values):
            out.append(f"{_fmt(values[0])} (all {len(values)})")
        else:
            out.append(f"{_fmt(min(values), 3)}…{_fmt(max(values), 3)} ({len(values)})")
    return out


def _how(stats: Mapping[str, float]) -> str:
    """How a task is normalised: at its head or in its loss only, and the fallbacks."""
    parts = ["head" if stats.get("located") else "loss only"]
    if stats.get("fallback"):
        parts.append("no variance yet: σ = max(1, |μ|)")
    if stats.get("skipped"):
        parts.append(f"{int(stats['skipped'])} non-finite batches skipped")
    return "; ".join(parts)


def render_context(
    records: Sequence[StepRecord], task: str | None = None, rows: int = 8, width: int = 80
) -> Group:
    """At a retrieval policy's refresh steps (evenly thinned to at most ``rows`` steps and the
    last): each task's context features and the weight it got at that step (a few
    features per table; ``cos_query``, which traces written before it was left out list as 0,
    is not shown)."""
    names = _tasks(records, task)
    refresh = [r for r in records if r.context]
    n = len(refresh)
    title = f"context at refresh steps ({n} refresh{'es' if n != 1 else ''})"
    if not refresh:
        return Group(Table(title=title))
    stride = max(1, -(-len(refresh) // max(rows, 1)))  # at most ``rows``, then the last
    chosen = [r for i, r in enumerate(refresh) if i % stride == 0 or i == len(refresh) - 1]
    if len(chosen) < len(refresh):
        title = f"context at refresh steps ({len(chosen)} of {n} refreshes)"
    features = [
        k
        for k in dict.fromkeys(k for r in chosen for v in r.context.values() for k in v)
        if k != "cos_query"
    ]
    tables = []
    for first in range(0, len(features), _FEATURES_PER_TABLE):
        part = features[first : first + _FEATURES_PER_TABLE]
        cells = [
            [str(r.step), name, _fmt(r.task_weights().get(name))]
            + [_fmt(r.context[name].get(f)) for f in part]
            for r in chosen
            for name in names
            if name in r.context
        ]
        columns = ["step", "task", "weight", *part]
        tables.append(_table(title if first == 0 else "", columns, cells, ["task"], width))
    return Group(*tables)


def mean_weights(records: Sequence[StepRecord]) -> dict[str, float | None]:
    """Each task's weight averaged over the steps that were not skipped and that list the task
    (``None`` if the method gives none).

    Each task is divided by its own count of steps: dividing by the count of all steps (as an
    earlier version did) put a task's mean below its lowest weight whenever the task was missing
    from some steps.
    """
    sums: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for r in records:
        if r.skipped:
            continue
        for task, w in r.task_weights().items():
            counts[task] = counts.get(task, 0) + 1
            prev = sums.get(task, 0.0)
            sums[task] = None if w is None or prev is None else prev + w
    return {t: None if v is None else v / counts[t] for t, v in sums.items()}


def gate_changes(records: Sequence[StepRecord]) -> list[tuple[int, Term]]:
    """Every term whose gate changed, with the step (a retrieval policy's ``on:``/``off:``)."""
    return [
        (r.step, t)
        for r in records
        for t in r.terms
        if t.note is not None and t.note.startswith(("on:", "off:"))
    ]


def render_changes(
    records: Sequence[StepRecord], task: str | None = None, width: int = 80
) -> Group:
    """The gate changes of a trace: step, task, loss, on/off and why (nothing without them)."""
    names = _tasks(records, task)
    rows = [
        [str(step), t.task, t.loss, t.note or ""]
        for step, t in gate_changes(records)
        if t.task in names
    ]
    if not rows:
        return Group()
    columns = ["step", "task", "loss", "change"]
    return _table("terms switched on or off", columns, rows, ["task", "loss", "change"], width)


def retrievals(records: Sequence[StepRecord]) -> list[StepRecord]:
    """The records that list a retrieval policy's candidates with their utilities (its
    retrievals and online meta-steps)."""
    return [r for r in records if any(t.utility is not None for t in r.terms)]


def render_retrievals(
    records: Sequence[StepRecord], task: str | None = None, width: int = 80
) -> Group:
    """Every candidate at every retrieval: its gate after the retrieval, this retrieval's
    utility, the gate's evidence so far (utilities since it was first retrieved and their mean) and
    why the gate moved, if it did (notes numbered under the table when long, or when the table
    would be wider than ``width``)."""
    names = _tasks(records, task)
    columns = ["step", "task", "loss", "gate", "utility", "mean/n", "note"]

    def rows(notes: _Notes) -> list[list[str]]:
        return [
            [
                str(r.step),
                t.task,
                t.loss,
                "on" if t.active else "off",
                *_evidence(t),
                notes.cell(t.note),
            ]
            for r in retrievals(records)
            for t in r.terms
            if t.task in names and t.utility is not None
        ]

    left = ["task", "loss", "note"]
    notes, cells = _noted(columns, rows, left, width)
    table = _table("candidates at each retrieval", columns, cells, left, width)
    return notes.listed(table)


def render_step(
    records: Sequence[StepRecord], step: int, task: str | None = None, width: int = 80
) -> Group:
    """Every term of one step: task, loss, weight, effective multiplier, gate and score (notes
    numbered under the table when long, or when the table would be wider than ``width``); then,
    when the step recorded them, its context features and target-normaliser statistics."""
    names = _tasks(records, task)
    found = [r for r in records if r.step == step]
    if not found:
        raise ValueError(
            f"Step {step} is not in this trace (steps {records[0].step}..{records[-1].step})."
        )
    r = found[0]
    status = f"skipped: {r.reason}" if r.skipped else "ok"
    evidence = any(t.utility is not None for t in r.terms)
    with_mult = any(t.multiplier is not None for t in r.terms)
    # at a retrieval, a candidate's utility (its score relative to the natural loss's) for its score
    columns = ["task", "loss", "w", *(["mult"] if with_mult else []), "gate"]
    columns += ["utility", "mean/n"] if evidence else ["score"]
    columns.append("note")

    def rows(notes: _Notes) -> list[list[str]]:
        out = []
        for term in r.terms:
            if term.task in names:
                cells = [term.task, term.loss, _fmt(term.weight, 3)]
                cells += [_fmt(term.multiplier, 3)] if with_mult else []
                cells.append("on" if term.active else "off")
                cells += _evidence(term) if evidence else [_fmt(term.score, 3)]
                out.append([*cells, notes.cell(term.note)])
        return out

    left = ["task", "loss", "note"]
    notes, cells = _noted(columns, rows, left, width)
    title = f"step {r.step} ({run_title(r)}, {status})"
    table = _table(title, columns, cells, left, width)
    # the record holds one loss per task (its active terms' combined loss)
    losses = ", ".join(f"{n} {_fmt(r.losses.get(n))}" for n in names)
    parts: list[Group | Text] = [notes.listed(table), Text(f"task losses: {losses}")]
    if r.context:
        parts.append(render_context([r], task, width=width))
    if r.targets:
        parts.append(render_targets([r], task, width))
    return Group(*parts)
