"""Step records, built in one place. On the loss path a record is kept *pending*: the losses and
weights stay on their device until somebody reads the record (``Composer.last_record``, the
trace writer every ``trace_every`` steps), so the training step itself reads nothing back."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lossrag.keys import TermKey
from lossrag.record import StepRecord, Term, TraceWriter

__all__ = ["Pending", "Recorder", "make_record", "method_terms"]


def method_terms(
    pairs: Sequence[TermKey],
    weights: Sequence[float] | None,
    multipliers: Sequence[float] | None = None,
) -> list[Term]:
    """One active term per ``(task, loss)`` pair with its weight (``None``: the method has no
    weights) and effective multiplier."""
    return [
        Term.model_construct(
            task=task,
            loss=loss,
            weight=None if weights is None else weights[i],
            active=True,
            score=None,
            note=None,
            utility=None,
            multiplier=None if multipliers is None else multipliers[i],
        )
        for i, (task, loss) in enumerate(pairs)
    ]


def make_record(
    step: int,
    method: str,
    pairs: Sequence[TermKey],
    values: Sequence[float],
    terms: list[Term],
    *,
    reason: str | None = None,
    skipped: bool = False,
    timings: dict[str, float] | None = None,
    context: dict[str, dict[str, float]] | None = None,
    targets: dict[str, dict[str, float]] | None = None,
) -> StepRecord:
    """A :class:`StepRecord`; ``values`` are the losses of ``pairs`` (a task's first term
    gives its recorded loss)."""
    losses: dict[str, float] = {}
    for (task, _), v in zip(pairs, values, strict=True):
        losses.setdefault(task, v)
    return StepRecord.model_construct(
        step=step,
        method=method,
        losses=losses,
        terms=terms,
        skipped=skipped,
        reason=reason,
        timings=timings or {},
        context=context or {},
        targets=targets or {},
        version=None,
    )


@dataclass
class Pending:
    """A record whose numbers still live on the device.

    ``make(values, weights, finite)`` builds the record from the host copies of ``values`` (the
    term losses), ``weights`` (or ``None``) and whether the step's losses were finite.
    """

    values: Tensor
    weights: Tensor | None
    make: Callable[[list[float], list[float] | None, bool], StepRecord]
    #: Whether the step's losses were finite on every rank (a 0-dim bool tensor); by default,
    #: whether ``values`` are.
    finite: Tensor | None = None

    def materialise(self) -> StepRecord:
        """Read the numbers (one device-to-host copy) and build the record."""
        device = self.values.device
        finite = torch.isfinite(self.values).all() if self.finite is None else self.finite
        parts = [self.values.detach().float().reshape(-1), finite.float().reshape(1).to(device)]
        if self.weights is not None:
            parts.append(self.weights.detach().float().reshape(-1).to(device))
        flat = torch.cat(parts).tolist()
        n = self.values.numel()
        weights = flat[n + 1 :] if self.weights is not None else None
        return self.make(flat[:n], weights, flat[n] == 1.0)


class _Kept:
    """A kept record (pending until read) and the notice to add to its reason."""

    def __init__(
        self,
        item: Pending | StepRecord,
        notice: str | None,
        annotate: Callable[[StepRecord], None] | None,
    ) -> None:
        self.item, self.notice, self.annotate = item, notice, annotate

    def record(self) -> StepRecord:
        """The record, read from the device once."""
        if isinstance(self.item, Pending):
            self.item = self.item.materialise()
        if self.annotate is not None:
            self.annotate(self.item)
            self.annotate = None
        if self.notice is not None:
            reason = self.item.reason
            self.item.reason = self.notice if reason is None else f"{reason}; {self.notice}"
            self.notice = None
        return self.item


class Recorder:
    """The last step's record and the trace: pending records are read from the device when
    asked for, or ``every`` records at a time for the trace."""

    def __init__(
        self,
        trace: str | os.PathLike[str] | None,
        every: int,
        annotate: Callable[[], Callable[[StepRecord], None] | None] | None = None,
        append: bool = False,
    ) -> None:
        self.writer = TraceWriter(trace, append=append) if trace is not None else None
        self.append = append
        self.every = every
        #: Called when a record is kept: what adds that step's extras (e.g. the target
        #: statistics as they were then) to the record when it is read.
        self.annotate = annotate
        #: Said in the reason of the next record kept (e.g. a step the GradScaler skipped).
        self.notice: str | None = None
        self._last: _Kept | None = None
        self._unwritten: list[_Kept] = []

    def keep(self, item: Pending | StepRecord) -> None:
        """Keep ``item`` as the last record and queue it for the trace, written at the next
        :meth:`release` (its optimizer step's later micro-batches may still change it: a
        gradient method's weights, a skip)."""
        self._last = _Kept(item, self.notice, None if self.annotate is None else self.annotate())
        self.notice = None
        if self.writer is not None:
            self._unwritten.append(self._last)

    def release(self) -> None:
        """Write the queued records if they are due: a record already read, or ``every`` of
        them."""
        last = self._last
        if self.writer is None or last is None or not self._unwritten:
            return
        if isinstance(last.item, StepRecord) or len(self._unwritten) >= self.every:
            self.flush()

    def last(self) -> StepRecord | None:
        """The last record kept."""
        return None if self._last is None else self._last.record()

    def flush(self) -> None:
        """Write the queued records to the trace."""
        if self.writer is not None:
            for kept in self._unwritten:
                self.writer.write(kept.record())
        self._unwritten.clear()

    def resume(self, step: int) -> None:
        """A run resumed at ``step``: an appended trace drops what it holds from ``step`` on."""
        if self.writer is not None and self.append:
            self.writer.keep_before(step)

    def close(self) -> None:
        """Flush and close the trace."""
        if self.writer is not None:
            self.flush()
            self.writer.close()
