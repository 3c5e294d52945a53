"""MetaWeighting (Mao, Wang, Liu, Lin & Xie, Findings of ACL 2022), on the look-ahead machinery.

The training batch is the support set, ``wrap(..., query=)`` the query set. Every step, before
the real update, with the look-ahead ``θ' = θ − η Σ_t ω_t ∇L_t^S(θ)`` (η the optimizer's
learning rate): one query forward, one backward per task ``v_t = ∇L_t^Q(θ')``, and one central
finite difference per task give the per-task hypergradients ``d_t[i] = −η⟨∇L_i^S(θ), v_t⟩``
(``research/algorithms.md`` §1.11, §2.1). Their common descent direction ``d* = Σ γ_t d_t``,
``γ = argmin_{γ∈Δ} ‖Σ γ_t d_t‖²`` (the min-norm point, :func:`lossrag.minnorm.common_direction`)
updates ``ω ← ω − β d*/RMS(d*)``; ω is then kept positive and renormalised to sum to the number
of tasks. The normalisation of the step and of ω are this implementation's reading: the
published description leaves both open (``research/algorithms.md`` §1.11), and ``η⟨g, v⟩`` is
too small for a fixed β to move ω at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lossrag.meta.hypergrad import directional
from lossrag.meta.online import MetaContext
from lossrag.minnorm import common_direction
from lossrag.weighting.base import LossMethod, register_method

__all__ = ["MetaWeighting"]


@register_method
class MetaWeighting(LossMethod):
    """MetaWeighting: task weights moved along the common descent direction of the per-task
    query hypergradients.

    Args:
        lr: Step β on ω along the RMS-normalised common direction.
        eps: Finite-difference step relative to ``‖v_t‖``.
        eta: Look-ahead step when no optimizer is given to ``wrap`` (else its lr).
    """

    name = "metaweighting"
    needs_query: ClassVar[bool] = True

    def __init__(self, lr: float = 1e-2, eps: float = 0.01, eta: float = 1e-3) -> None:
        self.lr, self.eps, self.eta = lr, eps, eta

    def setup(self, num_terms: int, last_shared: Sequence[nn.Parameter]) -> None:
        super().setup(num_terms, last_shared)
        self.weights = torch.ones(num_terms)
        self.last_hypergradients: Tensor | None = None

    def weigh(self, losses: Tensor) -> Tensor:
        return self.weights.clone().to(losses)

    def meta_step(self, ctx: MetaContext) -> str | None:
        """Move ω along ``−d*`` (see the module docstring)."""
        eta = float(ctx.optimizer.param_groups[0]["lr"]) if ctx.optimizer is not None else self.eta
        live = list(ctx.named.values())
        grads = torch.autograd.grad(
            (self.weights.to(ctx.losses) * ctx.losses).sum(),
            live,
            retain_graph=True,
            allow_unused=True,
        )
        theta = {n: p.detach() for n, p in ctx.named.items()}
        ahead = {
            n: (theta[n] - eta * (0.0 if g is None else g)).requires_grad_(True)
            for n, g in zip(ctx.named, grads, strict=True)
        }
        rows, query_loss = ctx.query_gradients(ahead)
        if rows is None:
            return f"meta-step skipped (non-finite query loss {query_loss})"
        d = torch.stack(
            [-eta * directional(ctx.terms, theta, ctx.batch, v, "central", self.eps) for v in rows]
        ).to(torch.float64)
        if not bool(torch.isfinite(d).all()):
            return "meta-step skipped (non-finite hypergradient)"
        direction = common_direction(d)
        # η⟨g, v⟩ is tiny and its scale arbitrary: step along the direction at RMS 1
        unit = direction / direction.pow(2).mean().sqrt().clamp_min(1e-12)
        weights = (self.weights - self.lr * unit.to(self.weights)).clamp_min(1e-3)
        self.weights = weights * len(weights) / weights.sum()
        self.last_hypergradients = d
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = state["weights"].clone()
