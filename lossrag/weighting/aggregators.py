"""Gradient-based baselines taken from ``torchjd.aggregation``.

Each wraps one torchjd aggregator. For weighted aggregators the weights are computed once from the
Jacobian (``aggregator.weighting``) and the direction is ``weights @ J``, so stateful solvers
(Nash-MTL's warm start, GradVac's EMA targets) advance exactly once per step. GradDrop and ConFIG
return a direction that is not a weighted sum of the rows; their weights are recorded as ``None``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchjd import aggregation as agg

from lossrag.weighting.base import GradMethod, register_method

__all__ = [
    "IMTLG",
    "MGDA",
    "AlignedMTL",
    "CAGrad",
    "ConFIG",
    "DualProj",
    "FairGrad",
    "GradDrop",
    "GradVac",
    "NashMTL",
    "PCGrad",
    "UPGrad",
]


class _Aggregated(GradMethod):
    """A torchjd aggregator built at ``setup`` for the number of terms."""

    def _build(self, num_terms: int) -> agg.Aggregator:
        raise NotImplementedError

    def setup(self, num_terms: int, last_shared: Sequence[nn.Parameter]) -> None:
        super().setup(num_terms, last_shared)
        self.aggregator = self._build(num_terms)

    def aggregate(self, jacobian: Tensor) -> tuple[Tensor, Tensor | None]:
        a = self.aggregator
        if isinstance(a, agg.WeightedAggregator):
            weights = a.weighting(jacobian)
            return weights @ jacobian, weights
        return a(jacobian), None


def _simple(name: str, factory: Any, doc: str, randomized: bool = False) -> type[_Aggregated]:
    """Define and register a stateless wrapper around ``factory()``."""

    def _build(self: _Aggregated, num_terms: int) -> agg.Aggregator:
        return factory()

    body = {"name": name.lower(), "_build": _build, "__doc__": doc, "randomized": randomized}
    cls = type(name, (_Aggregated,), body)
    register_method(cls)
    return cls


MGDA = _simple(
    "MGDA",
    agg.MGDA,
    "MGDA (Sener & Koltun, NeurIPS 2018): the min-norm point of the "
    "convex hull of the task gradients, by Frank–Wolfe.",
)
PCGrad = _simple(
    "PCGrad",
    agg.PCGrad,
    "PCGrad (Yu et al., NeurIPS 2020): project away conflicting components in random order.",
    randomized=True,
)
IMTLG = _simple(
    "IMTLG",
    agg.IMTLG,
    "IMTL-G (Liu et al., ICLR 2021): equal projections of the update on every task gradient.",
)
UPGrad = _simple(
    "UPGrad",
    agg.UPGrad,
    "UPGrad (Quinton & Rey, 2024): project each gradient onto the "
    "dual cone of the others and average.",
)
AlignedMTL = _simple(
    "AlignedMTL",
    agg.AlignedMTL,
    "Aligned-MTL (Senushkin et al., CVPR 2023): align "
    "the principal components of the gradient system.",
)
DualProj = _simple(
    "DualProj",
    agg.DualProj,
    "DualProj: project the mean gradient onto the dual cone of the task gradients.",
)
ConFIG = _simple(
    "ConFIG",
    agg.ConFIG,
    "ConFIG (Liu et al., ICLR 2025): conflict-free direction from "
    "the pseudo-inverse of the unit gradients.",
)
GradDrop = _simple(
    "GradDrop",
    agg.GradDrop,
    "GradDrop (Chen et al., NeurIPS 2020): keep, per "
    "coordinate, gradients of one sign drawn by sign purity.",
    randomized=True,
)


@register_method
class CAGrad(_Aggregated):
    """CAGrad (Liu et al., NeurIPS 2021): the best worst-task improvement within ``c‖g₀‖`` of the
    mean gradient ``g₀``. Args: c: radius (the paper's default 0.4)."""

    name = "cagrad"

    def __init__(self, c: float = 0.4) -> None:
        self.c = c

    def _build(self, num_terms: int) -> agg.Aggregator:
        return agg.CAGrad(c=self.c)


@register_method
class FairGrad(_Aggregated):
    """FairGrad (Ban & Ji, ICML 2024): α-fair utility maximisation. Args: alpha (default 1)."""

    name = "fairgrad"

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha

    def _build(self, num_terms: int) -> agg.Aggregator:
        return agg.FairGrad(alpha=self.alpha)


@register_method
class GradVac(_Aggregated):
    """GradVac (Wang et al., ICLR 2021): steer pairwise cosines towards their EMA targets.

    Args: beta: EMA rate of the cosine targets (default 0.5).
    """

    name = "gradvac"
    randomized = True

    def __init__(self, beta: float = 0.5) -> None:
        self.beta = beta

    def _build(self, num_terms: int) -> agg.Aggregator:
        return agg.GradVac(beta=self.beta)

    def _weighting(self) -> Any:
        return self.aggregator.gramian_weighting

    def state_dict(self) -> dict[str, Any]:
        w = self._weighting()
        return {"phi": w._phi_t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        w = self._weighting()
        w._phi_t = state["phi"]
        w._state_key = None if state["phi"] is None else (state["phi"].shape[0], state["phi"].dtype)


@register_method
class NashMTL(_Aggregated):
    """Nash-MTL (Navon et al., ICML 2022): the bargaining solution ``GᵀGα = 1/α``.

    Args: max_norm: clip of the update norm (paper: 1); update_weights_every: solve every N steps
    (paper: 1); optim_niter: convex-concave iterations (paper: 20).
    """

    name = "nashmtl"

    def __init__(
        self, max_norm: float = 1.0, update_weights_every: int = 1, optim_niter: int = 20
    ) -> None:
        self.max_norm = max_norm
        self.update_weights_every = update_weights_every
        self.optim_niter = optim_niter

    def _build(self, num_terms: int) -> agg.Aggregator:
        return agg.NashMTL(
            n_tasks=num_terms,
            max_norm=self.max_norm,
            update_weights_every=self.update_weights_every,
            optim_niter=self.optim_niter,
        )

    def _weighting(self) -> Any:
        return self.aggregator.weighting

    def aggregate(self, jacobian: Tensor) -> tuple[Tensor, Tensor | None]:
        with warnings.catch_warnings():  # cvxpy's note that the problem is not DPP: harmless
            warnings.filterwarnings("ignore", message=".*not DPP.*")
            return super().aggregate(jacobian)

    def state_dict(self) -> dict[str, Any]:
        w = self._weighting()
        return {
            "step": float(w.step),
            "prvs_alpha": torch.from_numpy(np.array(w.prvs_alpha)),
            "normalization_factor": torch.from_numpy(np.array(w.normalization_factor)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        w = self._weighting()
        w.reset()
        w.step = float(state["step"])
        w.prvs_alpha = state["prvs_alpha"].numpy().copy()
        w.normalization_factor = state["normalization_factor"].numpy().copy()
        if w.step > 0:
            w._init_optim_problem()
