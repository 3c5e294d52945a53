"""Step records, built in one place. On the loss path a record is kept *pending*: the losses and
weights stay on their device until somebody reads the record (``Composer.last_record``, the
trace writer every ``trace_every`` steps), so the training step itself reads nothing back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lossrag.record import StepRecord, Term

__all__ = ["Pending", "make_record", "method_terms"]


def method_terms(
    pairs: Sequence[tuple[str, str]],
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
    pairs: Sequence[tuple[str, str]],
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
    extra: dict[str, object] = field(default_factory=dict)

    def materialise(self) -> StepRecord:
        """Read the numbers (one device-to-host copy) and build the record."""
        parts = [self.values.detach().float().reshape(-1)]
        if self.weights is not None:
            parts.append(self.weights.detach().float().reshape(-1).to(parts[0].device))
        flat = torch.cat(parts).tolist()
        n = self.values.numel()
        values = flat[:n]
        weights = flat[n:] if self.weights is not None else None
        finite = all(v == v and abs(v) != float("inf") for v in values)
        return self.make(values, weights, finite)
