"""GO4Align (Shen, Wang, Xiao, van Noord & Worring, NeurIPS 2024, arXiv:2404.06486), by hand.

Adaptive group risk minimisation, loss-based (no per-task gradients). At step ``t``, with the
detached losses ``L(t)``:

1. **Risk-guided indicators**: a running risk distribution ``p`` (``p(0) = 1/K``) is tilted by the
   current risks, ``p ← p ⊙ exp(−η L) / Σ(p ⊙ exp(−η L))`` (so ``p ∝ exp(−η Σ_{s≤t} L(s))``
   carries the tasks' risk trajectories), and each task's indicator is
   ``γ_i = (Σ_j L_j / L_i) · p_i``.
2. **Dynamical group assignment**: the ``K`` indicators are clustered into ``M`` groups by k-means
   (one dimension), and each task's weight is its group's centre, the mean indicator of its group:
   ``w = A c`` with ``A`` the ``K × M`` assignment matrix and ``c`` the centres. ``M = 1`` gives
   every task ``mean(γ)``; ``M ≥ K`` gives every task its own ``γ_i``.

The model step uses ``Σ w_i L_i``. This follows the authors' code
(``autumn9999/GO4Align``, ``methods/cluster_methods.py``, class ``GO4ALIGN``) and its NYUv2
defaults (``--robust_step_size 1e-4``). Differences, on purpose: the authors call a randomly
initialised k-means (``kmeans_pytorch``); here the 1-D k-means is solved *exactly* (the optimal
partition of sorted values into contiguous groups, by dynamic programming), which is deterministic
and reaches the global optimum that random restarts aim at; the tilt is done in log space so that
``p`` never underflows. The authors' NYUv2 trainer defaults to ``--num_groups 1`` (a single group);
the default here is 2 groups, the smallest number that makes grouping do anything (I could not
read the paper's per-benchmark M).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lossrag.weighting.base import LossMethod, register_method

__all__ = ["GO4Align", "go4align_indicators", "group_weights", "kmeans_1d"]

_EPS = 1e-12


def go4align_indicators(
    losses: Tensor, log_probs: Tensor, step_size: float
) -> tuple[Tensor, Tensor]:
    """One step of GO4Align's risk-guided indicators.

    Args:
        losses: Detached losses ``L`` ``(K,)``, positive.
        log_probs: ``log p`` of the running risk distribution ``(K,)``.
        step_size: ``η`` of the exponential tilt.

    Returns:
        The indicators ``γ_i = (Σ_j L_j / L_i) · p_i`` and the updated ``log p``.
    """
    tilted = log_probs - step_size * losses
    log_probs = tilted - torch.logsumexp(tilted, dim=0)
    scale = losses.sum() / losses.clamp_min(_EPS)
    return scale * log_probs.exp(), log_probs


def kmeans_1d(values: Tensor, num_groups: int) -> Tensor:
    """Exact k-means of ``K`` scalars into ``min(num_groups, K)`` groups.

    In one dimension an optimal partition consists of contiguous runs of the sorted values, so a
    dynamic programme over split points finds the global minimum of the within-group sum of
    squares in ``O(M K²)``. Ties between equally good partitions go to the one with the earliest
    split. Returns the group index ``(K,)`` (int64) of each value, groups numbered by increasing
    centre.
    """
    if num_groups < 1:
        raise ValueError(f"kmeans_1d: num_groups must be >= 1, got {num_groups}.")
    x = values.detach().double().cpu()
    k = x.numel()
    m = min(num_groups, k)
    order = torch.argsort(x, stable=True)
    s = x[order].tolist()
    prefix, prefix_sq = [0.0], [0.0]
    for v in s:
        prefix.append(prefix[-1] + v)
        prefix_sq.append(prefix_sq[-1] + v * v)

    def sse(i: int, j: int) -> float:  # values s[i:j]
        total = prefix[j] - prefix[i]
        return max(prefix_sq[j] - prefix_sq[i] - total * total / (j - i), 0.0)

    # cost[g][j]: best cost of s[:j] in g groups; cut[g][j]: start of the last group
    cost = [[math.inf] * (k + 1) for _ in range(m + 1)]
    cut = [[0] * (k + 1) for _ in range(m + 1)]
    cost[0][0] = 0.0
    for g in range(1, m + 1):
        for j in range(g, k + 1):
            for i in range(g - 1, j):
                c = cost[g - 1][i] + sse(i, j)
                if c < cost[g][j] - 1e-15 * max(1.0, abs(c)):
                    cost[g][j], cut[g][j] = c, i
    labels_sorted = [0] * k
    j = k
    for g in range(m, 0, -1):
        i = cut[g][j]
        for r in range(i, j):
            labels_sorted[r] = g - 1
        j = i
    labels = torch.empty(k, dtype=torch.int64)
    labels[order] = torch.tensor(labels_sorted, dtype=torch.int64)
    return labels


def group_weights(indicators: Tensor, num_groups: int) -> Tensor:
    """GO4Align's group-level weights: every task gets the mean indicator of its k-means group
    (``w = A c``, ``c_g = Σ_{i∈g} γ_i / |g|``)."""
    labels = kmeans_1d(indicators, num_groups).to(indicators.device)
    m = int(labels.max()) + 1
    assignment = torch.nn.functional.one_hot(labels, m).to(indicators)
    centres = (assignment * indicators[:, None]).sum(0) / assignment.sum(0)
    return assignment @ centres


@register_method
class GO4Align(LossMethod):
    """GO4Align's adaptive group risk minimisation (see the module docstring for the rule).

    Args:
        num_groups: Number of groups ``M`` (clipped to the number of terms).
        step_size: ``η``, the tilt of the risk distribution per step (authors' default 1e-4).
    """

    name = "go4align"
    positive_losses: ClassVar[bool] = True

    def __init__(self, num_groups: int = 2, step_size: float = 1e-4) -> None:
        if num_groups < 1:
            raise ValueError(f"GO4Align: num_groups must be >= 1, got {num_groups}.")
        if step_size < 0:
            raise ValueError(f"GO4Align: step_size must be >= 0, got {step_size}.")
        self.num_groups = num_groups
        self.step_size = step_size

    def setup(self, num_terms: int, last_shared: Sequence[nn.Parameter]) -> None:
        super().setup(num_terms, last_shared)
        self.log_probs = torch.full((num_terms,), -math.log(num_terms), dtype=torch.float64)

    def weigh(self, losses: Tensor) -> Tensor:
        """Tilt ``p`` by this step's losses, then return the group weights of the indicators.
        Non-finite or non-positive losses leave the state as it is and return NaN weights (the
        composer then skips the step)."""
        values = losses.detach().double().cpu()
        if not bool(torch.isfinite(values).all()) or not bool((values > 0).all()):
            return torch.full_like(losses.detach(), math.nan)
        indicators, self.log_probs = go4align_indicators(values, self.log_probs, self.step_size)
        return group_weights(indicators, self.num_groups).to(losses.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"log_probs": self.log_probs.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log_probs = state["log_probs"].double().clone()
