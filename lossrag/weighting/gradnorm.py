"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018, §3), written by hand.

With ``W`` the last shared layer, ``G_i = ‖∇_W (w_i L_i)‖ = w_i n_i``, ``Ḡ = mean_i G_i``,
``L̃_i = L_i / L_i(0)`` and ``r_i = L̃_i / mean_j L̃_j``, the weights minimise

    L_grad = Σ_i | G_i − sg[Ḡ · r_i^α] |,     so  ∂L_grad/∂w_i = sign(G_i − Ḡ r_i^α) · n_i,

and are renormalised to ``Σ w_i = K`` after every update. The model step of step ``t`` uses
``w(t)``; the update to ``w(t+1)`` happens in the same call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lossrag.weighting.base import LossMethod, register_method

__all__ = ["GradNorm", "gradnorm_weight_grad"]

_EPS = 1e-12


def gradnorm_weight_grad(
    weights: Tensor, norms: Tensor, losses: Tensor, initial: Tensor, alpha: float
) -> Tensor:
    """Gradient of GradNorm's ``L_grad`` with respect to the weights (paper §3, Eq. 2).

    Args:
        weights: Current task weights ``w`` ``(K,)``.
        norms: ``n_i = ‖∇_W L_i‖`` ``(K,)`` (unweighted gradient norms on the last shared layer).
        losses: Current losses ``L_i(t)`` ``(K,)``.
        initial: Losses at the first step ``L_i(0)`` ``(K,)``.
        alpha: Asymmetry ``α``.
    """
    g = weights * norms
    ratio = losses / initial.clamp_min(_EPS)
    r = ratio / ratio.mean().clamp_min(_EPS)
    target = g.mean() * r.pow(alpha)
    return torch.sign(g - target) * norms


@register_method
class GradNorm(LossMethod):
    """GradNorm with the paper's L1 balancing loss on the last shared layer.

    Args:
        alpha: Asymmetry (1.5, the paper's NYUv2 value and LibMTL's default).
        lr: Adam learning rate of the weights (the paper learns them with the model's optimizer;
            1e-3 is the benchmark's model learning rate).
    """

    name = "gradnorm"
    live_losses = True
    per_task_gradients = True

    def __init__(self, alpha: float = 1.5, lr: float = 1e-3) -> None:
        if alpha < 0:
            raise ValueError(f"GradNorm: alpha must be >= 0, got {alpha}.")
        self.alpha = alpha
        self.lr = lr

    def setup(self, num_terms: int, last_shared: Sequence[nn.Parameter]) -> None:
        super().setup(num_terms, last_shared)
        if not last_shared:
            raise ValueError("GradNorm needs `shared` to hold at least one trainable parameter.")
        self.layer = list(last_shared)
        self.weights = nn.Parameter(torch.ones(num_terms))
        self.optimizer = torch.optim.Adam([self.weights], lr=self.lr)
        self.initial: Tensor | None = None

    def weigh(self, losses: Tensor) -> Tensor:
        current = self.weights.detach().clone()
        detached = losses.detach().cpu()  # the weights and their Adam live on the CPU
        if self.initial is None:
            self.initial = detached.clone()
        norms = torch.stack([self._norm(loss) for loss in losses]).to(detached)
        if not bool(torch.isfinite(norms).all()):
            return current.to(losses)  # the composer skips the step; the weights stay as they are
        grad = gradnorm_weight_grad(current, norms, detached, self.initial, self.alpha)
        self.weights.grad = grad.to(self.weights)
        self.optimizer.step()
        self.weights.grad = None
        with torch.no_grad():
            self.weights.clamp_(min=_EPS)
            self.weights.mul_(self.num_terms / self.weights.sum())
        return current.to(losses)

    def _norm(self, loss: Tensor) -> Tensor:
        grads = torch.autograd.grad(loss, self.layer, retain_graph=True, allow_unused=True)
        sq = [g.pow(2).sum() for g in grads if g is not None]
        return torch.stack(sq).sum().sqrt() if sq else loss.new_zeros(())

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights.detach().clone(),
            "initial": self.initial,
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.weights.copy_(state["weights"])
        self.initial = state["initial"]
        self.optimizer.load_state_dict(state["optimizer"])
