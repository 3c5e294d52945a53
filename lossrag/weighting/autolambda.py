"""Auto-Lambda (Liu, James, Davison & Johns, TMLR 2022), on LossRAG's look-ahead machinery.

Every step, before the real update: a virtual SGD step with the current weights λ (including the
optimizer's momentum and weight decay, as the authors' code does), the query loss at the virtual
parameters, ``v`` its gradient, and a central finite difference of the training term losses along
``v`` give ``∂L_Q/∂λ_i = −α⟨∇L_i, v⟩`` (``research/algorithms.md`` §1.10, §2.1). λ starts at 0.1,
is unconstrained and is stepped by Adam (lr 1e-4); the real step then uses the new λ. The query
batches are whatever ``wrap(..., query=)`` gives (the benchmark: the validation split; the paper
reshuffles the training set).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lossrag.meta.hypergrad import directional
from lossrag.meta.online import MetaContext
from lossrag.weighting.base import LossMethod, register_method

__all__ = ["AutoLambda"]


@register_method
class AutoLambda(LossMethod):
    """Auto-Lambda: task weights learned by one-step look-ahead on the query loss.

    Args:
        lr: Adam learning rate of λ (1e-4, the paper's NYUv2 value).
        init: Initial weight of every task (0.1).
        eps: Finite-difference step relative to ``‖v‖`` (0.01, as in the code).
        alpha: Virtual step size when no optimizer is given to ``wrap`` (else its lr).
    """

    name = "autolambda"
    needs_query: ClassVar[bool] = True

    def __init__(
        self, lr: float = 1e-4, init: float = 0.1, eps: float = 0.01, alpha: float = 1e-3
    ) -> None:
        self.lr, self.init, self.eps, self.alpha = lr, init, eps, alpha

    def setup(self, num_terms: int, last_shared: Sequence[nn.Parameter]) -> None:
        super().setup(num_terms, last_shared)
        self.weights = nn.Parameter(torch.full((num_terms,), self.init))
        self.optimizer = torch.optim.Adam([self.weights], lr=self.lr)

    def weigh(self, losses: Tensor) -> Tensor:
        return self.weights.detach().clone().to(losses)

    def meta_step(self, ctx: MetaContext) -> str | None:
        """Update λ from this step's training batch and one query batch (see the module
        docstring); returns why it was skipped, if it was."""
        alpha, momentum, decay = self.alpha, {}, 0.0
        if ctx.optimizer is not None:
            group = ctx.optimizer.param_groups[0]
            alpha, decay = float(group["lr"]), float(group.get("weight_decay", 0.0))
            factor = float(group.get("momentum", 0.0) or 0.0)
            for name, p in ctx.named.items():
                buffer = ctx.optimizer.state.get(p, {}).get("momentum_buffer")
                if buffer is not None:
                    momentum[name] = factor * buffer
        live = list(ctx.named.values())
        grads = torch.autograd.grad(
            (self.weights.detach().to(ctx.losses) * ctx.losses).sum(),
            live,
            retain_graph=True,
            allow_unused=True,
        )
        theta = {n: p.detach() for n, p in ctx.named.items()}
        ahead = {
            n: (
                theta[n]
                - alpha * (momentum.get(n, 0.0) + (0.0 if g is None else g) + decay * theta[n])
            ).requires_grad_(True)
            for (n, _), g in zip(ctx.named.items(), grads, strict=True)
        }
        v, query_loss = ctx.query_gradient(ahead)
        if v is None:
            return f"meta-step skipped (non-finite query loss {query_loss})"
        slope = directional(ctx.terms, theta, ctx.batch, v, "central", self.eps)
        grad = (-alpha * slope).to(self.weights)
        if not bool(torch.isfinite(grad).all()):
            return "meta-step skipped (non-finite hypergradient)"
        self.weights.grad = grad
        self.optimizer.step()
        self.weights.grad = None
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.weights.copy_(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
