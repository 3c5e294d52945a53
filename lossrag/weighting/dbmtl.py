"""DB-MTL, Dual-Balancing Multi-Task Learning (Lin et al., 2023, arXiv:2308.12029), written by
hand.

Two balancing steps on the shared parameters ``θ``:

1. **Loss scale**: train on ``log(L_i + ε)``; its gradient is ``ĝ_i = ∇L_i / (L_i + ε)``, so the
   Jacobian of the log-losses is the Jacobian of the raw losses with row ``i`` divided by
   ``L_i + ε``.
2. **Gradient magnitude**: an EMA of each task's log-loss gradient,

       m_i(t) = β_t · m_i(t−1) + (1 − β_t) · ĝ_i(t),   β_t = β / t^σ,   m_i(0) = 0,

   then every task is rescaled to the largest norm and the rescaled gradients are summed:

       d(t) = Σ_i α_i m_i(t),   α_i = max_j ‖m_j(t)‖ / (‖m_i(t)‖ + 1e-8).

The rule, the zero initial buffer (no bias correction), ``ε = 1e-8`` and the defaults
``β = 0.9``, ``σ = 0`` follow LibMTL's ``LibMTL/weighting/DB_MTL.py`` and ``LibMTL/config.py``
(``--DB_beta 0.9 --DB_beta_sigma 0``). The task heads are trained on ``Σ log(L_i + ε)``, i.e. they
get ``Σ ∇L_i / (L_i + ε)``: ``heads_weighted`` is True and :meth:`DBMTL.head_weights` returns
``1/(L + ε)``.

The composer must call :meth:`DBMTL.observe_losses` with this step's detached ``(K,)`` losses
before :meth:`DBMTL.aggregate` (the Jacobian alone does not carry the loss values).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lossrag.weighting.base import GradMethod, register_method

__all__ = ["DBMTL", "dbmtl_direction"]

#: Division guard of the norm ratio (LibMTL's constant).
_NORM_EPS = 1e-8


def dbmtl_direction(buffer: Tensor) -> tuple[Tensor, Tensor]:
    """DB-MTL's gradient-magnitude balancing of the EMA buffer ``m`` ``(K, n)``.

    Returns the direction ``Σ_i α_i m_i`` ``(n,)`` and the scales ``α_i = max_j‖m_j‖/(‖m_i‖+1e-8)``
    ``(K,)``; every rescaled row then has (up to the guard) the largest row's norm.
    """
    norms = buffer.norm(dim=1)
    alpha = norms.max() / (norms + _NORM_EPS)
    return alpha @ buffer, alpha


@register_method
class DBMTL(GradMethod):
    """DB-MTL: log-losses and EMA gradients rescaled to the largest task's norm.

    Args:
        beta: EMA coefficient ``β`` of the log-loss gradients (LibMTL default 0.9).
        beta_sigma: Decay exponent ``σ`` of ``β_t = β / t^σ`` (LibMTL default 0: constant β).
        eps: ``ε`` inside ``log(L + ε)`` (LibMTL: 1e-8).
    """

    name = "dbmtl"
    positive_losses: ClassVar[bool] = True
    scale_free: ClassVar[bool] = True
    heads_weighted: ClassVar[bool] = True

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"DB-MTL: beta must be in [0, 1), got {beta}.")
        if beta_sigma < 0.0:
            raise ValueError(f"DB-MTL: beta_sigma must be >= 0, got {beta_sigma}.")
        if eps < 0.0:
            raise ValueError(f"DB-MTL: eps must be >= 0, got {eps}.")
        self.beta = beta
        self.beta_sigma = beta_sigma
        self.eps = eps

    def setup(self, num_terms: int, last_shared: Sequence[nn.Parameter]) -> None:
        super().setup(num_terms, last_shared)
        self.step = 0
        self.buffer: Tensor | None = None
        self._losses: Tensor | None = None

    def observe_losses(self, losses: Tensor) -> None:
        """Receive this step's detached ``(K,)`` term losses; called by the composer before
        :meth:`aggregate`. Raises ValueError for a wrong length or a non-positive loss."""
        values = losses.detach().flatten()
        if values.numel() != self.num_terms:
            raise ValueError(
                f"DB-MTL: observe_losses got {values.numel()} losses for {self.num_terms} terms."
            )
        if not bool(torch.all(values + self.eps > 0)):
            raise ValueError(
                f"DB-MTL trains on log(L + {self.eps}): every loss must exceed {-self.eps}, "
                f"got {values.tolist()}."
            )
        self._losses = values.clone()

    def head_weights(self) -> Tensor:
        """``1 / (L_i + ε)`` of the last observed losses: the heads' gradient is then
        ``Σ ∇ log(L_i + ε)`` (ones before any losses were observed)."""
        if self._losses is None:
            return torch.ones(self.num_terms)
        return 1.0 / (self._losses + self.eps)

    def aggregate(self, jacobian: Tensor) -> tuple[Tensor, Tensor | None]:
        """Update the EMA with the log-loss Jacobian ``J_i / (L_i + ε)`` and return the balanced
        direction. The weights are ``None``: the direction mixes past steps' gradients."""
        if self._losses is None:
            raise RuntimeError(
                "DB-MTL needs this step's losses: call observe_losses(losses) before aggregate."
            )
        scale = (1.0 / (self._losses + self.eps)).to(jacobian)
        log_jacobian = jacobian.detach() * scale[:, None]
        self.step += 1
        beta_t = self.beta / self.step**self.beta_sigma
        if self.buffer is None or self.buffer.shape != log_jacobian.shape:
            self.buffer = torch.zeros_like(log_jacobian)
        self.buffer = log_jacobian + beta_t * (self.buffer.to(log_jacobian) - log_jacobian)
        direction, _ = dbmtl_direction(self.buffer)
        return direction, None

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "buffer": None if self.buffer is None else self.buffer.detach().clone(),
            "losses": None if self._losses is None else self._losses.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.buffer = state["buffer"]
        self._losses = state["losses"]
