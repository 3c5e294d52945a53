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

__all__ = ["coefficients", "floored_softmax", "weights"]


def floored_softmax(a: Tensor, tasks: int, floor: float, temperature: float) -> Tensor:
    """``K·((1 − floor)·softmax(a/τ) + floor/n)`` over the ``n`` scores ``a`` (differentiable),
    ``K = tasks``: they sum to the number of tasks, each at least ``K·floor/n``."""
    soft = torch.softmax(a / temperature, 0)
    return tasks * ((1 - floor) * soft + floor / len(a))


def weights(
    scores: Mapping[TermKey, float],
    active: Sequence[TermKey],
    tasks: int,
    floor: float,
    temperature: float,
) -> dict[TermKey, float]:
    """The weight of every active term from its score (0 for one not scored yet), in float64."""
    a = torch.tensor([scores.get(k, 0.0) for k in active], dtype=torch.float64)
    w = floored_softmax(a, tasks, floor, temperature)
    return dict(zip(active, w.tolist(), strict=True))


def coefficients(
    weights: Mapping[TermKey, float], terms: Sequence[TermKey], scales: Sequence[float], tasks: int
) -> list[float]:
    """``w_i / scale_i`` for ``terms``: a term without a weight gets 0, and every term
    ``tasks / len(terms)`` before any weights exist."""
    even = tasks / len(terms)
    ws = [weights.get(k, 0.0) if weights else even for k in terms]
    return [w / s for w, s in zip(ws, scales, strict=True)]
