"""More baselines from torchjd 0.18: four weightings of the Jacobian and two scalarisations.

Gradient-based (:class:`~lossrag.weighting.base.GradMethod`): the weights are computed once per step
from this step's ``(K, n)`` Jacobian and the direction is ``weights @ J``, so every stateful
weighting advances exactly once per step, as in ``aggregators.py``.

- ``excessmtl``: ExcessMTL (He et al., ICML 2024), exponentiated-gradient weights driven by
  excess-risk estimates; its state holds a ``K × n`` sum of squared gradients.
- ``sdmgrad``: SDMGrad (Xiao et al., NeurIPS 2023), simplex weights pulled toward the mean.
- ``modo``: MoDo (Chen et al., JMLR 2024), projected-gradient simplex weights.
- ``crmogm``: CR-MOGM (Zhou et al., NeurIPS 2022), an EMA of another weighting's weights.

SDMGrad and MoDo are defined on ``J₁J₂ᵀ`` from two *independent* mini-batches (double sampling,
which makes their weight update unbiased). The composer computes one Jacobian per step, so they
receive the single-batch Gramian ``JJᵀ``: the same update rule, with the bias of the single-batch
estimate the papers' double sampling removes.

Loss-based (:class:`~lossrag.weighting.base.LossMethod`), through ``_Scalarized`` of
``scalarizers.py``: the weight of term ``i`` is ``∂S/∂L_i`` at this step's losses.

- ``cosmos``: COSMOS (Ruchte & Grabocka, ICDM 2021): ``Σ r_i L_i − λ cos(r, L)``.
- ``pbi``: penalty-based boundary intersection (Zhang & Li, MOEA/D, IEEE TEC 2007):
  ``d₁ + θ d₂``.

Both take a preference vector ``r``; by default it is uniform and fixed (one trade-off, which is
what a weighting baseline is). ``resample=True`` draws ``r ~ Dirichlet(concentration·1)`` at every
step, as the papers do to cover the whole Pareto front (COSMOS also feeds ``r`` to the model,
which the composer does not do).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchjd import aggregation as agg
from torchjd import scalarization as sc

from lossrag._util import unknown_name_error
from lossrag.weighting.base import GradMethod, register_method
from lossrag.weighting.scalarizers import _Scalarized

__all__ = ["COSMOS", "CRMOGM", "PBI", "ExcessMTL", "MoDo", "SDMGrad"]


class _Weighted(GradMethod):
    """A torchjd weighting of the Jacobian (``matrix``) or of its Gramian, built at ``setup``."""

    #: True when the weighting takes the ``K × K`` Gramian ``JJᵀ``, False for the Jacobian.
    takes_gramian: ClassVar[bool] = True

    def _build(self, num_terms: int) -> Any:
        raise NotImplementedError

    def setup(self, num_terms: int, last_shared: Sequence[nn.Parameter]) -> None:
        super().setup(num_terms, last_shared)
        self.weighting = self._build(num_terms)

    def aggregate(self, jacobian: Tensor) -> tuple[Tensor, Tensor | None]:
        """``w = weighting(JJᵀ)`` (or ``weighting(J)``); direction ``w @ J``."""
        j = jacobian.detach()
        weights = self.weighting(j @ j.T if self.takes_gramian else j)
        return weights @ jacobian, weights

    #: The weighting's tensor state (torchjd buffers), saved and restored by name.
    _tensors: ClassVar[tuple[str, ...]] = ()

    def _key(self) -> Any:
        """torchjd's ``_state_key`` for the restored tensors (None: state is rebuilt next call)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """The weighting's tensor state, cloned (None where not yet built)."""
        return {k: _clone(getattr(self.weighting, k)) for k in self._tensors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self._tensors:
            setattr(self.weighting, k, _clone(state[k]))
        if hasattr(self.weighting, "_state_key"):
            self.weighting._state_key = self._key()


def _clone(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, Tensor) else value


def _vector_key(t: Tensor | None) -> Any:
    """torchjd's state key ``(K, dtype, device)`` of a ``(K,)`` state vector."""
    return None if t is None else (t.shape[0], t.dtype, t.device)


@register_method
class ExcessMTL(_Weighted):
    """ExcessMTL (He et al., ICML 2024, Eqs. 6–9), torchjd's ``ExcessMTLWeighting``.

    ``w ← softmax(log w + η_α · Ê / Ê₀)`` with the excess-risk proxy
    ``Ê_i = Σ_k g_ik² / √(Σ_{s≤t} g_ik² + 1e-7)`` (AdaGrad diagonal Hessian), ``Ê₀`` its first
    value (or warm-up mean), ``w(0) = 1/K``.

    Args:
        robust_step_size: ``η_α``. Default 1e-2, LibMTL's ``--robust_step_size``; torchjd's own
            default of 1 puts ~all the weight on one task within two steps on random Jacobians.
        n_warmup_steps: Steps of uniform weights while ``Ê₀`` is averaged (default 0: first step).
    """

    name = "excessmtl"
    takes_gramian = False
    _tensors = ("_weights", "_sq_grad_sum", "_initial_w", "_warmup_w_sum")

    def __init__(self, robust_step_size: float = 1e-2, n_warmup_steps: int = 0) -> None:
        if robust_step_size <= 0:
            raise ValueError(f"excessmtl: robust_step_size must be > 0, got {robust_step_size}.")
        if n_warmup_steps < 0:
            raise ValueError(f"excessmtl: n_warmup_steps must be >= 0, got {n_warmup_steps}.")
        self.robust_step_size = robust_step_size
        self.n_warmup_steps = n_warmup_steps

    def _build(self, num_terms: int) -> Any:
        return agg.ExcessMTLWeighting(self.robust_step_size, self.n_warmup_steps)

    def _key(self) -> Any:
        sq = self.weighting._sq_grad_sum
        return None if sq is None else (sq.shape[0], sq.shape[1], sq.dtype, sq.device)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "n_steps": self.weighting._n_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.weighting._n_steps = int(state["n_steps"])


@register_method
class SDMGrad(_Weighted):
    """SDMGrad (Xiao, Ban & Ji, NeurIPS 2023), torchjd's ``SDMGradWeighting``.

    ``n_iter`` momentum-SGD steps on ``w ∈ Δ`` of ``½‖J(w + λw̃)‖²`` (Gramian rescaled by its mean
    gradient norm), warm-started from the last step; weights ``(w + λw̃)/(1 + λ)``, ``w̃ = 1/K``.
    Fed the single-batch Gramian (see the module docstring).

    Args:
        lambda_: Pull toward the mean direction (authors' experiments and LibMTL: 0.3).
        lr: Inner SGD step (10). momentum: Inner momentum (0.5). n_iter: Inner steps (20).
    """

    name = "sdmgrad"

    def __init__(
        self, lambda_: float = 0.3, lr: float = 10.0, momentum: float = 0.5, n_iter: int = 20
    ) -> None:
        self.lambda_, self.lr, self.momentum, self.n_iter = lambda_, lr, momentum, n_iter
        self._build(2)  # torchjd validates the arguments (ValueError naming the parameter)

    def _build(self, num_terms: int) -> Any:
        return agg.SDMGradWeighting(self.lr, self.momentum, self.n_iter, self.lambda_)

    _tensors = ("_w",)

    def _key(self) -> Any:
        return _vector_key(self.weighting._w)


@register_method
class MoDo(_Weighted):
    """MoDo (Chen, Fernando, Ying & Chen, JMLR 2024, §2), torchjd's ``MoDoWeighting``.

    ``λ ← Π_Δ(λ − γ (JJᵀλ + ρλ))`` from ``λ(0) = 1/K``, one step per training step; weights ``λ``.
    Fed the single-batch Gramian (see the module docstring).

    Args:
        gamma: Step of the weight update (torchjd default 0.1). rho: ℓ₂ regulariser (0.1).
    """

    name = "modo"

    def __init__(self, gamma: float = 0.1, rho: float = 0.1) -> None:
        self.gamma, self.rho = gamma, rho
        self._build(2)

    def _build(self, num_terms: int) -> Any:
        return agg.MoDoWeighting(gamma=self.gamma, rho=self.rho)

    _tensors = ("_lambda",)

    def _key(self) -> Any:
        return _vector_key(self.weighting._lambda)


#: Gramian weightings CR-MOGM can smooth, by their policy name.
_CRMOGM_INNER: dict[str, Callable[[], Any]] = {
    "mgda": agg.MGDAWeighting,
    "upgrad": agg.UPGradWeighting,
    "dualproj": agg.DualProjWeighting,
    "imtlg": agg.IMTLGWeighting,
    "cagrad": lambda: agg.CAGradWeighting(c=0.4),
    "alignedmtl": agg.AlignedMTLWeighting,
    "mean": agg.MeanWeighting,
}


@register_method
class CRMOGM(_Weighted):
    """CR-MOGM (Zhou et al., NeurIPS 2022), torchjd's ``CRMOGMWeighting``: an EMA of the
    weights of another Gramian weighting, ``λ_t = α λ_{t−1} + (1 − α) λ̂_t``, ``λ_0 = λ̂_1``.

    Args:
        inner: The smoothed weighting, by policy name (default ``"mgda"``, the paper's CR-MGDA).
        alpha: EMA coefficient on the previous weights (torchjd default 0.9).
    """

    name = "crmogm"

    def __init__(self, inner: str = "mgda", alpha: float = 0.9) -> None:
        if inner not in _CRMOGM_INNER:
            raise unknown_name_error("crmogm inner weighting", inner, _CRMOGM_INNER)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"crmogm: alpha must be in [0, 1], got {alpha}.")
        self.inner, self.alpha = inner, alpha

    def _build(self, num_terms: int) -> Any:
        return agg.CRMOGMWeighting(_CRMOGM_INNER[self.inner](), alpha=self.alpha)

    _tensors = ("_lambda",)


class _Preference(_Scalarized):
    """A scalariser with a preference vector ``r``: fixed, or drawn from a Dirichlet each step."""

    def __init__(
        self,
        preference: Sequence[float] | None,
        resample: bool,
        concentration: float,
    ) -> None:
        if concentration <= 0:
            raise ValueError(f"{self.name}: concentration must be > 0, got {concentration}.")
        if preference is not None and any(not p >= 0 for p in preference):
            raise ValueError(f"{self.name}: preference must be non-negative, got {preference}.")
        if preference is not None and sum(preference) <= 0:
            raise ValueError(f"{self.name}: preference must have a positive entry.")
        self.preference = None if preference is None else [float(p) for p in preference]
        self.resample = resample
        # the composer runs a randomised method on its own RNG stream: only when resampling
        object.__setattr__(self, "randomized", resample)
        self.concentration = concentration

    def _preference(self, num_terms: int) -> Tensor:
        if self.preference is None:
            return torch.full((num_terms,), 1.0 / num_terms)
        if len(self.preference) != num_terms:
            raise ValueError(
                f"{self.name}: preference has {len(self.preference)} values for {num_terms} terms."
            )
        return torch.tensor(self.preference)

    def weigh(self, losses: Tensor) -> Tensor:
        """``∂S/∂L_i`` at this step's losses, after drawing ``r`` when ``resample`` is True."""
        if self.resample:
            alpha = torch.full((self.num_terms,), self.concentration)
            scalarizer: Any = self.scalarizer
            scalarizer.weights = torch.distributions.Dirichlet(alpha).sample()
        working = self._working_dtype(losses.dtype)
        return super().weigh(losses.to(working)).to(losses.dtype)

    def _working_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype the scalariser computes in for losses of ``dtype`` (widening its vectors
        where its arithmetic needs one dtype, never narrowing them)."""
        return dtype

    def state_dict(self) -> dict[str, Any]:
        s: Any = self.scalarizer
        return {"weights": s.weights.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        s: Any = self.scalarizer
        s.weights = state["weights"].clone()


@register_method
class COSMOS(_Preference):
    """COSMOS (Ruchte & Grabocka, ICDM 2021), torchjd's ``COSMOS`` scalariser:
    ``S(L) = Σ r_i L_i − λ (r·L)/(‖r‖‖L‖)``; weight ``∂S/∂L_i``.

    Args:
        lambda_: Cosine penalty ``λ`` (the paper uses 0.01 to 8 by data set, no single best; 1).
        preference: ``r`` (default uniform ``1/K``).
        resample: Draw ``r ~ Dirichlet(concentration)`` every step (default False).
        concentration: Dirichlet concentration (1: uniform on the simplex).
    """

    name = "cosmos"

    def __init__(
        self,
        lambda_: float = 1.0,
        preference: Sequence[float] | None = None,
        resample: bool = False,
        concentration: float = 1.0,
    ) -> None:
        if lambda_ < 0:
            raise ValueError(f"cosmos: lambda_ must be >= 0, got {lambda_}.")
        super().__init__(preference, resample, concentration)
        self.lambda_ = lambda_

    def _build(self, num_terms: int) -> sc.Scalarizer:
        return sc.COSMOS(self.lambda_, self._preference(num_terms))


@register_method
class PBI(_Preference):
    """PBI (Zhang & Li, MOEA/D, IEEE TEC 2007), torchjd's ``PBI`` scalariser:
    ``d₁ = (L − z*)·ŵ``, ``d₂ = ‖L − z* − d₁ŵ‖``, ``S = d₁ + θd₂``; weight ``∂S/∂L_i``.

    Args:
        theta: Penalty ``θ`` (the paper's 5).
        preference: ``w`` (default uniform ``1/K``).
        reference: Ideal point ``z*`` (default the origin, for non-negative losses).
        resample: Draw ``w ~ Dirichlet(concentration)`` every step (default False).
        concentration: Dirichlet concentration.
    """

    name = "pbi"

    def __init__(
        self,
        theta: float = 5.0,
        preference: Sequence[float] | None = None,
        reference: Sequence[float] | None = None,
        resample: bool = False,
        concentration: float = 1.0,
    ) -> None:
        if theta < 0:
            raise ValueError(f"pbi: theta must be >= 0, got {theta}.")
        super().__init__(preference, resample, concentration)
        self.theta = theta
        self.reference = None if reference is None else [float(z) for z in reference]

    def _build(self, num_terms: int) -> sc.Scalarizer:
        reference = None
        if self.reference is not None:
            if len(self.reference) != num_terms:
                raise ValueError(
                    f"pbi: reference has {len(self.reference)} values for {num_terms} terms."
                )
            reference = torch.tensor(self.reference)
        return sc.PBI(self.theta, self._preference(num_terms), reference)

    def _working_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The wider of the losses' dtype and ``w``'s, ``w`` and ``z*`` widened to it: PBI's
        dot products do not promote float32 to float64 (the toy's losses), and half-precision
        losses must not round a fixed preference for good."""
        s: Any = self.scalarizer
        working = torch.promote_types(s.weights.dtype, dtype)
        s.weights = s.weights.to(working)
        if s.reference is not None:
            s.reference = s.reference.to(working)
        return working
