"""Step records and JSONL traces: what happened at every training step."""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["StepRecord", "Term", "TraceWriter", "iter_trace", "read_trace"]


class Term(BaseModel):
    """One (task, loss) pair at one step.

    ``weight`` is the weight the method gave the term (not divided by any loss scale); ``None`` for
    methods that produce no weights (e.g. GradDrop). ``score`` is the policy's score, if it has one;
    ``note`` says why a retrieval policy lists the term (``retrieved``, ``explore``), why its gate
    changed (``on: ...``, ``off: ...``) or why it held (``stays on: ...``, ``stays off: ...``).
    ``loss`` is the library entry id (``huber(delta=0.5)``).
    ``utility`` has two meanings, by the step: at a retrieval, the gates' input, the candidate's
    score minus its task's natural loss's (positive: the score favours switching it on; with no
    corruption evidence every candidate's is minus the prior's switch cost; the natural loss's is
    0, or minus the best active alternative's); at an online meta-step (``query=``), the
    measured hypergradient ``dL_Q/dw`` (negative: more weight would lower the query loss).
    ``multiplier`` is the term's effective multiplier on its raw loss: ``weight`` divided by the
    loss scale the method normalises by, recorded by the retrieval policies; ``None`` for the
    other methods, in older traces, or for a term switched on at this step (it trains from the
    next step on: its task trained with its other terms at this one). ``seen`` and
    ``mean_utility``: a retrieval policy's evidence on the term's gate at a retrieval, the number
    of utilities measured since it was first retrieved or last switched off and their mean (the
    gate compares the mean with a confidence bound).
    """

    model_config = ConfigDict(extra="forbid")

    task: str
    loss: str
    weight: float | None
    active: bool = True
    score: float | None = None
    note: str | None = None
    utility: float | None = None
    multiplier: float | None = None
    seen: int | None = None
    mean_utility: float | None = None


class StepRecord(BaseModel):
    """What happened at one call of ``Composer.backward``.

    Attributes:
        step: Index of the step, counted from 0 (skipped steps included).
        method: Name of the weighting method.
        losses: Task name -> the mean loss of its first active term at this step (its natural
            loss while that is on; other terms' losses are not recorded); for a task in ``targets``
            (normalised), the loss on its standardised targets ``(t − μ)/σ``, not in its units.
        terms: Every term with its weight, gate and score.
        skipped: True when a loss or the combined gradient was not finite; no gradient was written
            and no weighting state was updated.
        reason: Why the step was skipped, if it was.
        timings: Seconds spent per phase (``losses``, ``weights``, ``backward``, ...).
        context: At a retrieval policy's refresh steps, task name -> its context features by
            name (:data:`lossrag.context.TERM_FEATURES` but ``cos_query``, a slot that holds 0,
            and ``gross_share`` where measured); empty otherwise.
        targets: Regression task name -> the target normaliser's statistics (``mu``, ``sigma``,
            ...); empty when target normalisation is off.
        version: Version of the trained policy behind ``method`` (the first 12 hex digits of
            its ``policy.json``'s SHA-256) when the method is one; ``None`` otherwise.
    """

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    step: int
    method: str
    losses: dict[str, float]
    terms: list[Term]
    skipped: bool = False
    reason: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    context: dict[str, dict[str, float]] = Field(default_factory=dict)
    targets: dict[str, dict[str, float]] = Field(default_factory=dict)
    version: str | None = None

    def task_weights(self) -> dict[str, float | None]:
        """Task name -> sum of the weights of its active terms (``None`` if the method has none)."""
        out: dict[str, float | None] = {}
        for term in self.terms:
            if not term.active:
                out.setdefault(term.task, 0.0)
                continue
            prev = out.get(term.task, 0.0)
            out[term.task] = None if term.weight is None or prev is None else prev + term.weight
        return out

    def task_multipliers(self) -> dict[str, float | None]:
        """Task name -> sum of the effective multipliers (:attr:`Term.multiplier`) of its active
        terms that have one (a term switched on at this step's refresh trains from the next
        step and has none yet); ``None`` for a task none of whose active terms has one."""
        sums: dict[str, float] = {}
        measured, unmeasured = set(), set()
        for term in self.terms:
            sums.setdefault(term.task, 0.0)
            if term.active and term.multiplier is not None:
                sums[term.task] += term.multiplier
                measured.add(term.task)
            elif term.active:
                unmeasured.add(term.task)
        return {t: None if t in unmeasured - measured else v for t, v in sums.items()}


class TraceWriter:
    """Write one run's records to a JSONL file, one whole line per record, flushed after each
    write.

    A trace file holds exactly one run. When ``path`` already holds records (another run, e.g. a
    script run again), that file is first renamed to the first free ``<name>.1``, ``<name>.2``, ...
    (so the highest number is the newest of the older runs) with a warning naming the new file,
    and this run starts a fresh file; runs are never mixed in one file. A folder, a path that is
    not a regular file, or a file that does not hold a trace is refused and left untouched. The
    file is opened when the writer is made, so an unwritable path fails at ``wrap`` time.

    Args:
        path: The trace file.
        append: Continue the run the file already holds (a run resumed from a checkpoint, whose
            steps carry on from the last one written) instead of rotating it; a last line left
            unfinished by a crash is cut off first. :func:`read_trace` refuses the file if the
            appended steps do not follow on.
    """

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False) -> None:
        self.path = Path(path)
        rotated = None
        try:
            _refuse_foreign(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if append:
                self._handle: IO[str] | None = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115
                _drop_torn_line(self._handle)
            else:
                rotated = _rotate(self.path)
                self._handle = open(self.path, "x", encoding="utf-8")  # noqa: SIM115
        except OSError as err:
            raise ValueError(f"Trace path {str(self.path)!r} cannot be written: {err}.") from err
        if rotated is not None:
            warnings.warn(
                f"Trace {str(self.path)!r} already held a run; it was moved to "
                f"{str(rotated)!r} and this run starts a new trace.",
                stacklevel=3,
            )

    def keep_before(self, step: int) -> None:
        """Drop the records of ``step`` and later (a run resumed from a checkpoint of ``step``
        after it had gone further before it stopped), rewriting the file atomically."""
        if self._handle is None:
            raise ValueError(f"Trace {str(self.path)!r} is closed.")
        self._handle.seek(0)
        lines = self._handle.read().splitlines(keepends=True)
        kept = [line for line in lines if json.loads(line)["step"] < step]
        if len(kept) == len(lines):
            return
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text("".join(kept), encoding="utf-8")
        self._handle.close()
        os.replace(temporary, self.path)
        self._handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115

    def write(self, record: StepRecord) -> None:
        """Append ``record`` as one line and flush it to disk."""
        if self._handle is None:
            raise ValueError(f"Trace {str(self.path)!r} is closed.")
        self._handle.write(record.model_dump_json() + "\n")
        self._handle.flush()

    def close(self) -> None:
        """Close the file; later writes raise."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


#: How every trace line starts (a record's first field), ``json.dumps``'s spacing allowed.
_TRACE_START = re.compile(rb'\s*\{\s*"step"\s*:')


def _refuse_foreign(path: Path) -> None:
    """Raise, touching nothing, when ``path`` is a folder, not a regular file, or a file with
    content that does not start as a trace does: moving it aside or appending to it would
    mislay or corrupt the user's data (a user trial's ``trace="out"`` moved its working folder
    to ``out.1``)."""
    if path.is_dir():
        raise ValueError(
            f"Trace path {str(path)!r} is a folder; give a file in it, e.g. "
            f"{str(path / 'trace.jsonl')!r}."
        )
    if path.exists() and not path.is_file():
        raise ValueError(f"Trace path {str(path)!r} is not a regular file; give a file path.")
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as handle:
            head = handle.read(64)
        if not _TRACE_START.match(head):
            raise ValueError(
                f"Trace path {str(path)!r} holds a file that is not a LossRAG trace; it was left "
                "as it is. Give another path (an existing trace is moved aside to <name>.1, or "
                "continued with trace_append=True)."
            )


def _rotate(path: Path) -> Path | None:
    """Move a non-empty ``path`` to the first free ``<path>.<n>`` and return that name; an empty
    file is removed. ``None`` when there was nothing to move.

    The move never overwrites: a hard link claims the new name atomically (it fails if the name
    is taken) before the old name is unlinked; where hard links are not supported, a rename
    after an existence check is used instead.
    """
    if not path.exists():
        return None
    if path.stat().st_size == 0:
        path.unlink()
        return None
    n = 1
    while True:
        target = path.with_name(f"{path.name}.{n}")
        try:
            os.link(path, target)
        except FileExistsError:
            n += 1
            continue
        except OSError:
            if target.exists():
                n += 1
                continue
            os.replace(path, target)
            return target
        path.unlink()
        return target


def _drop_torn_line(handle: IO[str]) -> None:
    """Truncate an append-mode file after its last newline."""
    binary = handle.buffer  # type: ignore[attr-defined]
    size = binary.seek(0, os.SEEK_END)
    if size == 0:
        return
    binary.seek(size - 1)
    if binary.read(1) == b"\n":
        return
    binary.seek(0)
    data = binary.read()
    binary.truncate(data.rfind(b"\n") + 1)
    handle.seek(0, os.SEEK_END)


def read_trace(path: str | os.PathLike[str]) -> list[StepRecord]:
    """Load every record of a JSONL trace of one run.

    A last line cut short by a crash is dropped with a warning; a malformed line elsewhere is an
    error naming the file and line. A file that mixes runs (written by an older version that
    appended to an existing trace) is refused with an error naming the line where the second run
    starts: the step counter not increasing, or the method changing.
    """
    return list(iter_trace(path))


def _check_same_run(
    path: str | os.PathLike[str], number: int, prev: StepRecord, record: StepRecord
) -> None:
    """Raise when ``record`` (at line ``number``) cannot follow ``prev`` in one run."""
    if record.method != prev.method:
        why = f"the method changes from {prev.method!r} to {record.method!r}"
    elif record.step <= prev.step:
        why = f"the step counter restarts (step {record.step} after step {prev.step})"
    else:
        return
    raise ValueError(
        f"Trace {str(path)!r} mixes runs: line {number}: {why}. A trace holds one run; "
        f"split the file before line {number} to read each run."
    )


def iter_trace(path: str | os.PathLike[str]) -> Iterator[StepRecord]:
    """Yield the records of a JSONL trace one by one, reading line by line (see
    :func:`read_trace`; the check that the file holds one run included)."""
    prev: StepRecord | None = None
    for number, record in _numbered(path):
        if prev is not None:
            _check_same_run(path, number, prev, record)
        prev = record
        yield record


def _lines(path: Path, handle: Iterator[str]) -> Iterator[str]:
    """The lines of an open trace; a file that is not UTF-8 text is an error naming it."""
    try:
        yield from handle
    except UnicodeDecodeError as err:
        raise ValueError(f"Trace {str(path)!r} is not a text (JSONL) file: {err}.") from err


def _numbered(path: str | os.PathLike[str]) -> Iterator[tuple[int, StepRecord]]:
    """Yield (line number, record) for each record line of a trace."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"Trace {str(p)!r} is a folder, not a JSONL trace file.")
    if not p.is_file():
        raise FileNotFoundError(f"Trace {str(p)!r} does not exist.")
    with open(p, encoding="utf-8") as handle:
        for number, line in enumerate(_lines(p, handle), start=1):
            if not line.endswith("\n"):
                if line.strip():
                    warnings.warn(
                        f"Trace {str(p)!r} ends with an unfinished line (an interrupted write); "
                        "it was ignored.",
                        stacklevel=3,
                    )
                return
            if not line.strip():
                continue
            try:
                yield number, StepRecord.model_validate(json.loads(line))
            except (json.JSONDecodeError, ValueError) as err:
                raise ValueError(
                    f"Trace {str(p)!r}, line {number}: not a step record ({err})."
                ) from err
