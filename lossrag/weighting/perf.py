"""Performance-based dynamic weighting: a task that performs poorly on its metric gets more weight.

The statistic is a ``(K,)`` vector of per-task performance ``m ∈ [0, 1]`` (higher is better, 1 is
best), which the composer computes and hands over through :meth:`PerformanceWeighting.
observe_metrics` (``needs_metrics`` is True). Two forms:

- ``form="inverse"`` (default): ``w_i ∝ 1 / (1 + m_i)``: between 1 (worst) and ½ (best), a mild
  prioritisation of the tasks that lag.
- ``form="dtp"``: Dynamic Task Prioritization (Guo, Haque, Huang, Yeung & Fei-Fei, ECCV 2018,
  §4, task-level focal loss): ``w_i ∝ −(1 − κ_i)^γ log κ_i`` with the KPI ``κ_i = m_i`` clipped to
  ``[1e-6, 1]``; ``γ`` is the task-level focusing parameter (``γ = 0``: ``−log κ``). A perfect task
  (``κ = 1``) gets weight 0. The paper smooths the KPI with an EMA, ``κ̄ ← α κ + (1 − α) κ̄``;
  ``momentum`` here is ``1 − α`` (0: no smoothing).

Both are rescaled to ``Σ w = K`` (so the total step size matches EW); if every raw weight is 0 (all
tasks perfect under DTP) the weights are 1. Until the first metrics arrive the weights are 1.

How to map a metric to ``m ∈ [0, 1]`` (see :func:`performance_from_metric`): a bounded score
(accuracy, F1, IoU, AUC, R² clipped at 0) is used as is; an error (MAE, MSE, RMSE, a loss) becomes
``m = v_ref / (v_ref + v)`` with ``v_ref`` the task's first measured value (or a given scale):
``m = ½`` at the reference, ``→ 1`` as the error vanishes, ``→ 0`` as it grows; it is monotone,
scale-free, never exactly 0 (DTP's ``log κ`` stays finite) and needs no clipping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from lossrag.weighting.base import LossMethod, register_method

__all__ = ["PerformanceWeighting", "dtp_weights", "inverse_weights", "performance_from_metric"]

#: Smallest KPI DTP takes the log of.
_KPI_MIN = 1e-6


def performance_from_metric(
    value: float, kind: Literal["score", "error"], reference: float | None = None
) -> float:
    """Map one metric value to a performance ``m ∈ [0, 1]`` (higher is better).

    Args:
        value: The metric's value.
        kind: ``"score"`` for a bounded higher-is-better metric in [0, 1] (accuracy, F1, IoU,
            AUC; returned as is, clipped to [0, 1]); ``"error"`` for a non-negative
            lower-is-better metric (MAE, MSE, RMSE, a loss).
        reference: For ``"error"``: the scale ``v_ref`` (the task's first measured value);
            ``m = v_ref / (v_ref + value)``.
    """
    if not math.isfinite(value):
        raise ValueError(f"performance_from_metric: value must be finite, got {value}.")
    if kind == "score":
        return min(max(value, 0.0), 1.0)
    if kind != "error":
        raise ValueError(f"performance_from_metric: kind must be 'score' or 'error', got {kind!r}.")
    if reference is None or not reference > 0 or not math.isfinite(reference):
        raise ValueError(
            f"performance_from_metric: an error metric needs a positive reference, got {reference}."
        )
    if value < 0:
        raise ValueError(f"performance_from_metric: an error must be >= 0, got {value}.")
    return reference / (reference + value)


def _to_sum_k(raw: Tensor) -> Tensor:
    total = raw.sum()
    if not bool(total > 0) or not bool(torch.isfinite(total)):
        return torch.ones_like(raw)
    return raw * (raw.numel() / total)


def inverse_weights(performance: Tensor) -> Tensor:
    """``w_i = K (1 + m_i)⁻¹ / Σ_j (1 + m_j)⁻¹``."""
    return _to_sum_k(1.0 / (1.0 + performance))


def dtp_weights(performance: Tensor, gamma: float) -> Tensor:
    """DTP's task-level focal weights ``−(1 − κ)^γ log κ``, ``κ = clip(m, 1e-6, 1)``, rescaled to
    ``Σ w = K`` (all ones when every task is perfect)."""
    kpi = performance.clamp(_KPI_MIN, 1.0)
    return _to_sum_k(-((1.0 - kpi) ** gamma) * torch.log(kpi))


@register_method
class PerformanceWeighting(LossMethod):
    """Weights that decrease with each task's current performance (module docstring).

    Args:
        form: ``"inverse"`` (``1/(1 + m)``) or ``"dtp"`` (Guo et al. 2018).
        gamma: DTP's task-level focusing parameter ``γ`` (default 1; the paper tunes it per
            task, and ``γ = 0`` is plain ``−log κ``). Ignored by ``"inverse"``.
        momentum: Weight of the previous smoothed performance in an EMA,
            ``m̄ ← momentum·m̄ + (1 − momentum)·m`` (default 0: the latest metrics as they are).
    """

    name = "perf"
    #: The composer must call :meth:`observe_metrics` with per-task performance in [0, 1].
    needs_metrics: ClassVar[bool] = True

    def __init__(
        self, form: Literal["inverse", "dtp"] = "inverse", gamma: float = 1.0, momentum: float = 0.0
    ) -> None:
        if form not in ("inverse", "dtp"):
            raise ValueError(f"perf: form must be 'inverse' or 'dtp', got {form!r}.")
        if not gamma >= 0:
            raise ValueError(f"perf: gamma must be >= 0, got {gamma}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"perf: momentum must be in [0, 1), got {momentum}.")
        self.form = form
        self.gamma = gamma
        self.momentum = momentum

    def setup(self, num_terms: int, last_shared: Sequence[nn.Parameter]) -> None:
        super().setup(num_terms, last_shared)
        self.performance: Tensor | None = None

    def observe_metrics(self, performance: Tensor) -> None:
        """Receive the ``(K,)`` per-task performance in [0, 1] (higher is better).

        Raises:
            ValueError: ``performance`` has the wrong length or a value outside [0, 1] (NaN
                included).
        """
        values = torch.as_tensor(performance).detach().double().cpu().flatten()
        if values.numel() != self.num_terms:
            raise ValueError(
                f"perf: performance has {values.numel()} values for {self.num_terms} terms."
            )
        bad = [v for v in values.tolist() if not 0.0 <= v <= 1.0]
        if bad:
            raise ValueError(
                f"perf: performance must lie in [0, 1] (higher is better); found {bad} in "
                f"{values.tolist()}. Map errors with performance_from_metric(kind='error')."
            )
        if self.performance is None or self.momentum == 0.0:
            self.performance = values
        else:
            self.performance = self.momentum * self.performance + (1 - self.momentum) * values

    def weights(self) -> Tensor:
        """The current weights (float64, CPU): ones before any metrics."""
        if self.performance is None:
            return torch.ones(self.num_terms, dtype=torch.float64)
        if self.form == "dtp":
            return dtp_weights(self.performance, self.gamma)
        return inverse_weights(self.performance)

    def weigh(self, losses: Tensor) -> Tensor:
        """This step's weights, from the last observed performance (the losses are not used)."""
        return self.weights().to(losses.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"performance": None if self.performance is None else self.performance.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        p = state["performance"]
        self.performance = None if p is None else p.double().clone()
