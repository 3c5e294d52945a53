"""``toy2d``: the two-objective toy of CAGrad (Liu et al. 2021), first loss ×0.1 (Nash-MTL, FAMO).

Not an MLP problem, so it has its own small interface: objective values and closed-form gradients
(numpy, vectorised over points), the Pareto set and the distance to it, and :meth:`Toy2D.run`,
which runs a two-weight update rule with Adam from the five standard start points at once.

>>> import numpy as np
>>> toy = Toy2D(steps=2000)
>>> run = toy.run(lambda losses, grads: np.ones_like(losses))   # equal weighting
>>> run.trajectory.shape[0], run.final.shape
(5, (5, 2))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

__all__ = [
    "START_POINTS",
    "Toy2D",
    "ToyRule",
    "ToyRun",
    "pareto_set",
    "toy_gradients",
    "toy_losses",
]

#: The five start points of CAGrad / Nash-MTL / FAMO.
START_POINTS: tuple[tuple[float, float], ...] = (
    (-8.5, 7.5),
    (0.0, 0.0),
    (9.0, 9.0),
    (-7.5, -0.5),
    (9.0, -1.0),
)
_LOWER = 5e-6  # the toy's clamp on |u| inside the logarithms

#: An update rule: ``(losses (S, 2), gradients (S, 2, 2)) -> weights (S, 2)``; the step
#: direction of start point ``s`` is ``Σ_i weights[s, i] · gradients[s, i]``.
ToyRule = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _sech2(v: np.ndarray) -> np.ndarray:
    return 1.0 - np.tanh(v) ** 2


def _parts(x: np.ndarray) -> dict[str, np.ndarray]:
    """Building blocks of both objectives and their partial derivatives."""
    x1, x2 = x[..., 0], x[..., 1]
    t = np.tanh(x2)
    u = np.stack([-0.5 * x1 - 3.5 + t, -0.5 * x1 + 3.5 - t], axis=-1)
    du_dx2 = np.stack([_sech2(x2), -_sech2(x2)], axis=-1)
    absu = np.abs(u)
    kept = absu >= _LOWER  # torch.clamp passes the gradient where input >= min
    log_term = np.log(np.maximum(absu, _LOWER)) + 6.0
    dlog_du = np.where(kept, np.sign(u) / np.maximum(absu, _LOWER), 0.0)
    half = np.tanh(0.5 * x2)
    c1, c2 = np.maximum(half, 0.0), np.maximum(-half, 0.0)
    dc1 = np.where(half >= 0, 0.5 * _sech2(0.5 * x2), 0.0)
    dc2 = np.where(-half >= 0, -0.5 * _sech2(0.5 * x2), 0.0)
    centers = np.array([7.0, -7.0])
    quad = ((x1[..., None] - centers) ** 2 + 0.1 * (x2[..., None] + 8) ** 2) / 10 - 20
    return {
        "log": log_term, "dlog_dx1": -0.5 * dlog_du, "dlog_dx2": dlog_du * du_dx2,
        "c1": c1[..., None], "c2": c2[..., None], "dc1": dc1[..., None], "dc2": dc2[..., None],
        "quad": quad, "dquad_dx1": (x1[..., None] - centers) / 5,
        "dquad_dx2": np.broadcast_to(0.02 * (x2[..., None] + 8), quad.shape),
    }  # fmt: skip


def _check_points(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1:] != (2,):
        raise ValueError(f"toy2d: points must have shape (..., 2), found {x.shape}.")
    return x


def _losses(p: dict[str, np.ndarray], scale: tuple[float, float]) -> np.ndarray:
    return (p["c1"] * p["log"] + p["c2"] * p["quad"]) * np.asarray(scale)


def _gradients(p: dict[str, np.ndarray], scale: tuple[float, float]) -> np.ndarray:
    d1 = p["c1"] * p["dlog_dx1"] + p["c2"] * p["dquad_dx1"]
    d2 = p["dc1"] * p["log"] + p["c1"] * p["dlog_dx2"] + p["dc2"] * p["quad"]
    d2 = d2 + p["c2"] * p["dquad_dx2"]
    return np.stack([d1, d2], axis=-1) * np.asarray(scale)[:, None]


def toy_losses(x: np.ndarray, scale: tuple[float, float] = (0.1, 1.0)) -> np.ndarray:
    """The two objectives at points ``x`` ``(..., 2)``; returns ``(..., 2)``."""
    return _losses(_parts(_check_points(x)), scale)


def toy_gradients(x: np.ndarray, scale: tuple[float, float] = (0.1, 1.0)) -> np.ndarray:
    """Closed-form gradients at ``x`` ``(..., 2)``: ``(..., 2, 2)``, row ``i`` is ``∇f_i``.

    Matches torch autograd on the reference implementation, including ``torch.clamp`` passing
    the gradient at its boundary.
    """
    return _gradients(_parts(_check_points(x)), scale)


def pareto_set(n: int = 2001) -> np.ndarray:
    """``n`` points along the Pareto set, ``(n, 2)``, ordered by ``x1`` from −7 to 7.

    On the Pareto set ``λ∇f1 + (1−λ)∇f2 = 0`` with ``x2 < 0``, which gives ``x1 = 14λ − 7`` and a
    scalar equation in ``x2`` (solved by bisection on ``[−9, −8]``). Scaling an objective does not
    move the set.
    """
    lam = np.linspace(0.0, 1.0, n)
    low, high = np.full(n, -9.0), np.full(n, -8.0)

    def stationarity(x2: np.ndarray) -> np.ndarray:
        c2 = np.tanh(-0.5 * x2)
        dc2 = -0.5 * _sech2(0.5 * x2)
        mix = 19.6 * lam * (1 - lam) + 0.01 * (x2 + 8) ** 2 - 20
        return dc2 * mix + c2 * 0.02 * (x2 + 8)

    for _ in range(60):
        mid = 0.5 * (low + high)
        below = stationarity(mid) < 0
        low, high = np.where(below, mid, low), np.where(below, high, mid)
    return np.stack([14 * lam - 7, 0.5 * (low + high)], axis=1)


def _distance_to_polyline(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    start, seg = line[:-1], line[1:] - line[:-1]
    rel = points[..., None, :] - start
    t = np.clip((rel * seg).sum(-1) / (seg * seg).sum(-1), 0.0, 1.0)
    return np.linalg.norm(rel - t[..., None] * seg, axis=-1).min(axis=-1)


@dataclass(frozen=True)
class ToyRun:
    """Result of :meth:`Toy2D.run`, one row per start point.

    Attributes:
        trajectory: ``(S, K, 2)`` points every ``record_every`` steps (first and last included).
        losses: ``(S, K, 2)`` objective values along the trajectory.
        weights: ``(S, K, 2)`` weights the rule gave at those steps (the last row repeats).
        final: ``(S, 2)`` final points.
        pareto_distance: ``(S,)`` distance of the final points to the Pareto set.
        skipped: ``(S,)`` steps skipped because the rule gave non-finite weights.
    """

    trajectory: np.ndarray
    losses: np.ndarray
    weights: np.ndarray
    final: np.ndarray
    pareto_distance: np.ndarray
    skipped: np.ndarray


class Toy2D(BaseModel):
    """The CAGrad toy as a benchmark: objectives, gradients, Pareto set and runs.

    Attributes:
        scale: Factors of the two objectives (the first ×0.1, as in Nash-MTL and FAMO).
        starts: Start points.
        steps: Optimiser steps per run (Nash-MTL / FAMO: 50k; CAGrad: 100k).
        lr: Learning rate.
        optimizer: ``adam`` (as in the papers; torch defaults β = (0.9, 0.999), ε = 1e-8) or
            ``sgd``.
        record_every: Trajectory recording interval.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["toy2d"] = "toy2d"
    scale: tuple[PositiveFloat, PositiveFloat] = (0.1, 1.0)
    starts: tuple[tuple[float, float], ...] = Field(default=START_POINTS, min_length=1)
    steps: PositiveInt = 50000
    lr: PositiveFloat = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    record_every: PositiveInt = 100

    def losses(self, x: np.ndarray) -> np.ndarray:
        """Objective values ``(..., 2)`` at points ``(..., 2)``."""
        return toy_losses(x, self.scale)

    def gradients(self, x: np.ndarray) -> np.ndarray:
        """Gradients ``(..., 2, 2)`` (row ``i`` is ``∇f_i``) at points ``(..., 2)``."""
        return toy_gradients(x, self.scale)

    @cached_property
    def pareto(self) -> np.ndarray:
        """The Pareto set as a dense polyline ``(2001, 2)``."""
        return pareto_set()

    def pareto_distance(self, x: np.ndarray) -> np.ndarray:
        """Euclidean distance of points ``(..., 2)`` to the Pareto set."""
        return _distance_to_polyline(_check_points(x), self.pareto)

    def run(self, rule: ToyRule) -> ToyRun:
        """Run ``rule`` from every start point at once for :attr:`steps` steps.

        Each step computes the losses ``(S, 2)`` and gradients ``(S, 2, 2)``, asks the rule for
        weights ``(S, 2)`` and moves along ``Σ_i w_i ∇f_i`` with the optimiser. A start point
        whose weights are not finite skips that step (counted in ``ToyRun.skipped``).
        """
        x = np.array(self.starts, dtype=np.float64)
        m, v = np.zeros_like(x), np.zeros_like(x)
        skipped = np.zeros(len(x), dtype=np.int64)
        records: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for step in range(1, self.steps + 1):
            parts = _parts(x)
            losses, grads = _losses(parts, self.scale), _gradients(parts, self.scale)
            w = self._weights(rule, losses, grads)
            if (step - 1) % self.record_every == 0:
                records.append((x.copy(), losses, w))
            finite = np.isfinite(w).all(axis=1)
            skipped += ~finite
            direction = np.einsum("si,sij->sj", np.where(finite[:, None], w, 0.0), grads)
            x, m, v = self._update(x, direction, m, v, step, finite)
        records.append((x.copy(), self.losses(x), records[-1][2]))
        trajectory, losses_k, weights_k = (np.stack(r, axis=1) for r in zip(*records, strict=True))
        return ToyRun(trajectory, losses_k, weights_k, x, self.pareto_distance(x), skipped)

    @staticmethod
    def _weights(rule: ToyRule, losses: np.ndarray, grads: np.ndarray) -> np.ndarray:
        w = np.asarray(rule(losses.copy(), grads.copy()), dtype=np.float64)
        if w.shape != losses.shape:
            raise ValueError(
                f"toy2d: the rule must return weights of shape {losses.shape} (start points × 2), "
                f"found {w.shape}."
            )
        return w

    def _update(
        self,
        x: np.ndarray,
        direction: np.ndarray,
        m: np.ndarray,
        v: np.ndarray,
        step: int,
        active: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.optimizer == "sgd":
            return x - self.lr * direction, m, v
        keep = active[:, None]
        m = np.where(keep, 0.9 * m + 0.1 * direction, m)
        v = np.where(keep, 0.999 * v + 0.001 * direction**2, v)
        denom = np.sqrt(v) / np.sqrt(1 - 0.999**step) + 1e-8
        return np.where(keep, x - self.lr / (1 - 0.9**step) * m / denom, x), m, v
