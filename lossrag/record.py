"""Step records and JSONL traces: what happened at every training step."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["StepRecord", "Term", "TraceWriter", "read_trace"]


class Term(BaseModel):
    """One (task, loss) pair at one step.

    ``weight`` is the weight the method gave the term (not divided by any loss scale); ``None`` for
    methods that produce no weights (e.g. GradDrop). ``score`` is the policy's score, if it has one;
    ``note`` says why a retrieval policy lists the term (``retrieved``, ``explore``) or why its gate
    changed (``on: ...``, ``off: ...``). ``loss`` is the library entry id (``huber(delta=0.5)``).
    ``utility`` is the measured hypergradient ``dL_Q/dw`` of the term at an online meta-step
    (negative: more weight would lower the query loss).
    """

    model_config = ConfigDict(extra="forbid")

    task: str
    loss: str
    weight: float | None
    active: bool = True
    score: float | None = None
    note: str | None = None
    utility: float | None = None


class StepRecord(BaseModel):
    """What happened at one call of ``Composer.backward``.

    Attributes:
        step: Index of the step, counted from 0 (skipped steps included).
        method: Name of the weighting method.
        losses: Task name -> mean loss of its term(s) at this step.
        terms: Every term with its weight, gate and score.
        skipped: True when a loss or the combined gradient was not finite; no gradient was written
            and no weighting state was updated.
        reason: Why the step was skipped, if it was.
        timings: Seconds spent per phase (``losses``, ``weights``, ``backward``, ...).
        context: At a retrieval policy's refresh steps, task name -> its context features
            (:data:`lossrag.context.TERM_FEATURES`); empty otherwise.
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


class TraceWriter:
    """Append records to a JSONL file, one whole line per record, flushed after each write.

    The file is opened when the writer is made, so an unwritable path fails at ``wrap`` time. A
    last line left unfinished by a crash is cut off first, so that appending keeps the file valid.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle: IO[str] | None = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115
            _drop_torn_line(self._handle)
        except OSError as err:
            raise ValueError(f"Trace path {str(self.path)!r} cannot be written: {err}.") from err

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
    """Load every record of a JSONL trace.

    A last line cut short by a crash is dropped with a warning; a malformed line elsewhere is an
    error naming the file and line.
    """
    return list(iter_trace(path))


def iter_trace(path: str | os.PathLike[str]) -> Iterator[StepRecord]:
    """Yield the records of a JSONL trace one by one, reading line by line (see
    :func:`read_trace`)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Trace {str(p)!r} does not exist.")
    with open(p, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
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
                yield StepRecord.model_validate(json.loads(line))
            except (json.JSONDecodeError, ValueError) as err:
                raise ValueError(
                    f"Trace {str(p)!r}, line {number}: not a step record ({err})."
                ) from err
