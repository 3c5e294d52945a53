"""The weights as pure functions of the scores: a softmax with a floor, and the coefficients
``w / scale`` each term's raw loss is multiplied by.

>>> import torch
>>> floored_softmax(torch.zeros(2, dtype=torch.float64), tasks=2, floor=0.1, temperature=1.0)
tensor([1., 1.], dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lossrag.keys import TermKey

__all__ = ["coefficients", "floored_softmax", "task_weights", "weights"]


def floored_softmax(a: Tensor, tasks: int, floor: float, temperature: float) -> Tensor:
    """``K·((1 − floor)·softmax(a/τ) + floor/n)`` over the ``n`` scores ``a`` (differentiable),
    ``K = tasks``: they sum to the number of tasks, each at least ``K·floor/n``."""
    soft = torch.softmax(a / temperature, 0)
    return tasks * ((1 - floor) * soft + floor / len(a))


def task_weights(
    a: Tensor,
    group: Tensor,
    natural: Tensor,
    active: Tensor,
    tasks: int,
    floor: float,
    temperature: float,
) -> Tensor:
    """The weights of the active candidates, in order (differentiable in the scores ``a``).

    Each task's weight is :func:`floored_softmax` over the tasks of their natural losses'
    scores (``natural``: the index of each task's natural loss, in task order; the task's score
    whether that loss is switched off or not); it is split between the task's active terms
    (``active``, a mask; ``group``: each candidate's task) by a softmax of their scores. While
    every task has one active term this is :func:`floored_softmax` over the tasks; with several,
    a loss switched on for a task changes how the task's weight is spent, not how much of the
    total it gets (its score, which carries its utility, would otherwise draw weight from every
    other task)."""
    per_task = floored_softmax(a[natural], tasks, floor, temperature)
    g, z = group[active], a[active] / temperature
    top = torch.full_like(per_task, -torch.inf).scatter_reduce(0, g, z, "amax")
    e = torch.exp(z - top[g])
    total = torch.zeros_like(per_task).index_add(0, g, e)
    return per_task[g] * (e / total[g])


def weights(
    scores: Mapping[TermKey, float],
    active: Sequence[TermKey],
    natural: Mapping[str, str],
    floor: float,
    temperature: float,
) -> dict[TermKey, float]:
    """:func:`task_weights` of every active term from the scores (0 for one not scored yet;
    ``natural``: each task's natural loss, in task order), in float64."""
    names = list(natural)
    naturals = [TermKey(n, e) for n, e in natural.items()]
    keys = [*active, *(k for k in naturals if k not in active)]
    a = torch.tensor([scores.get(k, 0.0) for k in keys], dtype=torch.float64)
    group = torch.tensor([names.index(k.task) for k in keys])
    index = torch.tensor([keys.index(k) for k in naturals])
    mask = torch.arange(len(keys)) < len(active)
    w = task_weights(a, group, index, mask, len(names), floor, temperature)
    return dict(zip(active, w.tolist(), strict=True))


def coefficients(
    weights: Mapping[TermKey, float], terms: Sequence[TermKey], scales: Sequence[float], tasks: int
) -> list[float]:
    """``w_i / scale_i`` for ``terms``: a term without a weight gets 0, and every term
    ``tasks / len(terms)`` before any weights exist."""
    even = tasks / len(terms)
    ws = [weights.get(k, 0.0) if weights else even for k in terms]
    return [w / s for w, s in zip(ws, scales, strict=True)]
