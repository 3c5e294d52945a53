"""Gradient-based baselines taken from ``torchjd.aggregation``.

Each wraps one torchjd aggregator. For weighted aggregators the weights are computed once from the
Jacobian (``aggregator.weighting``) and the direction is ``weights @ J``, so stateful solvers
(Nash-MTL's warm start, GradVac's EMA targets) advance exactly once per step. GradDrop and ConFIG
return a direction that is not a weighted sum of the rows; their weights are recorded as ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

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


@register_method
class IMTLG(_Aggregated):
    """IMTL-G (Liu et al., ICLR 2021): equal projections of the update on every task gradient.

    With ``G = JJᵀ`` and ``d_i = √G_ii = ‖g_i‖``, the weights are ``v / Σv`` with ``v = G⁺d``
    (torchjd's form of the paper's closed form, which also admits linearly dependent rows). The
    Gramian of nearly parallel gradients has condition numbers up to ~1e6, where a float32
    pseudo-inverse is off by ~1e-3; the weights are therefore computed in float64 from the
    (float32) Jacobian and cast back: before the cast they match LibMTL's closed form in float64
    to ~1e-12 (``tests/test_baselines_new.py``).
    """

    name = "imtlg"

    def _build(self, num_terms: int) -> agg.Aggregator:
        return agg.IMTLG()

    def aggregate(self, jacobian: Tensor) -> tuple[Tensor, Tensor | None]:
        """Weights ``G⁺d / Σ G⁺d`` in float64; direction ``weights @ J`` in float64, both cast
        back to the Jacobian's dtype."""
        a: Any = self.aggregator
        j = jacobian.detach().double()
        weights = a.gramian_weighting(j @ j.T)
        return (weights @ j).to(jacobian.dtype), weights.to(jacobian.dtype)


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


def nash_bargaining(gram: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """The Nash bargaining weights of Navon et al. (2022): ``α > 0`` with ``(G Gᵀ) α = 1/α``.

    That equation is the stationarity condition of ``f(α) = ½ αᵀMα − Σ log αᵢ``, strictly convex on
    ``α > 0``; damped Newton on ``f`` solves it to machine precision in a few iterations (the paper
    approximates the same point with up to 20 sequential convex programs). ``M`` is rescaled to unit
    mean diagonal and given a ``1e-8`` ridge so that a zero gradient yields a large finite weight.
    """
    k = gram.shape[0]
    scale = float(np.trace(gram)) / k
    if not np.isfinite(scale) or scale <= 0.0:
        return np.ones(k)
    m = gram / scale + 1e-8 * np.eye(k)
    alpha = np.ones(k) if start is None else np.clip(start * np.sqrt(scale), 1e-6, None)

    def f(a: np.ndarray) -> float:
        return 0.5 * float(a @ m @ a) - float(np.log(a).sum())

    for _ in range(50):
        grad = m @ alpha - 1.0 / alpha
        step = -np.linalg.solve(m + np.diag(alpha**-2), grad)
        decrement = -float(grad @ step)  # ≈ 2 (f(α) − min f): Newton's stopping rule
        if decrement < 1e-14:
            break
        t = 1.0
        while np.any(alpha + t * step <= 0.0):
            t *= 0.5
        f0 = f(alpha)
        while f(alpha + t * step) > f0 - 0.25 * t * decrement and t > 1e-12:
            t *= 0.5
        alpha = alpha + t * step
    return alpha / np.sqrt(scale)


@register_method
class NashMTL(GradMethod):
    """Nash-MTL (Navon et al., ICML 2022): the bargaining solution ``GGᵀα = 1/α``, solved exactly by
    :func:`nash_bargaining` and warm-started from the previous step.

    Args: max_norm: clip of the update norm (paper: 1); update_weights_every: solve every N steps
    (paper: 1).

    As in the authors' code (``nash-mtl/methods/weight_methods.py``: ``Σ α_i L_i`` backward, then
    ``clip_grad_norm_`` on the shared parameters only), the task heads get ``Σ α_i ∇L_i`` with
    the *unclipped* α: ``heads_weighted`` is True and :meth:`head_weights` returns that α. The
    returned ``weights`` are the clipped ones that produce the shared direction.
    """

    name = "nashmtl"
    heads_weighted: ClassVar[bool] = True

    def __init__(self, max_norm: float = 1.0, update_weights_every: int = 1) -> None:
        if update_weights_every < 1:
            raise ValueError(
                f"nashmtl: update_weights_every must be ≥ 1, got {update_weights_every}."
            )
        self.max_norm = max_norm
        self.update_weights_every = update_weights_every

    def setup(self, num_terms: int, last_shared: Sequence[nn.Parameter]) -> None:
        super().setup(num_terms, last_shared)
        self.step = 0
        self.alpha: np.ndarray | None = None

    def aggregate(self, jacobian: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.alpha is None or self.step % self.update_weights_every == 0:
            j = jacobian.detach().double()
            self.alpha = nash_bargaining((j @ j.T).cpu().numpy(), self.alpha)
        self.step += 1
        weights = torch.from_numpy(self.alpha).to(jacobian)
        direction = weights @ jacobian
        norm = float(direction.norm())
        if self.max_norm > 0 and norm > self.max_norm:
            weights = weights * (self.max_norm / norm)
            direction = direction * (self.max_norm / norm)
        return direction, weights

    def head_weights(self) -> Tensor:
        """The unclipped bargaining weights α of the last :meth:`aggregate` call, for the task
        heads' gradient ``Σ α_i ∇L_i`` (float64, CPU; ones before the first call)."""
        if self.alpha is None:
            return torch.ones(self.num_terms, dtype=torch.float64)
        return torch.from_numpy(self.alpha.copy())

    def state_dict(self) -> dict[str, Any]:
        alpha = None if self.alpha is None else torch.from_numpy(self.alpha.copy())
        return {"step": self.step, "alpha": alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.alpha = None if state["alpha"] is None else state["alpha"].double().numpy().copy()
