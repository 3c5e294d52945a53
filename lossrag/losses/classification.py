"""Classification losses on logits ``(B, C)`` and integer targets ``(B,)``, returning ``(B,)``.

All are written with the target margin ``t = log sum_{k != y} exp(z_k - z_y)``, the log-odds
against the target: ``-log p_y = softplus(t)`` and ``1 - p_y = sigmoid(t)``, finite and accurate
even when ``p_y`` rounds to 0 or 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lossrag.losses._checks import class_targets, softplus
from lossrag.losses._registry import register

__all__ = ["brier", "ce", "focal", "gce", "label_smoothing", "mae_prob", "poly1", "sce"]

#: Value SCE assigns to log 0 in its reverse cross-entropy (Wang et al., 2019).
SCE_LOG_ZERO = -4.0


def _margin(loss: str, logits: Tensor, target: Tensor) -> Tensor:
    """``t = log sum_{k != y} exp(z_k - z_y)`` per sample, ``(B,)``."""
    index = class_targets(loss, logits, target)
    shifted = logits - logits.gather(1, index)
    is_target = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, index, True)
    return shifted.masked_fill(is_target, float("-inf")).logsumexp(dim=1)


@register("ce")
def ce(output: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy ``-log p_y`` (``torch.nn.CrossEntropyLoss`` without reduction)."""
    index = class_targets("ce", output, target)
    return F.cross_entropy(output, index.squeeze(1), reduction="none")


@register("focal")
def focal(output: Tensor, target: Tensor, *, gamma: float = 2.0) -> Tensor:
    """Focal loss ``-(1 - p_y)**gamma * log p_y``; ``gamma = 0`` is cross-entropy."""
    t = _margin("focal", output, target)
    return torch.exp(-gamma * softplus(-t)) * softplus(t)


@register("label_smoothing")
def label_smoothing(output: Tensor, target: Tensor, *, eps: float = 0.1) -> Tensor:
    """CE against ``(1 - eps) onehot + eps / C``, i.e. ``(1 - eps) CE + eps mean_k(-log p_k)``."""
    log_p_all = torch.log_softmax(output, dim=1)
    index = class_targets("label_smoothing", output, target)
    nll = -log_p_all.gather(1, index).squeeze(1)
    return (1.0 - eps) * nll - eps * log_p_all.mean(dim=1)


@register("poly1")
def poly1(output: Tensor, target: Tensor, *, epsilon: float = 1.0) -> Tensor:
    """Poly-1 loss ``-log p_y + epsilon * (1 - p_y)``."""
    t = _margin("poly1", output, target)
    return softplus(t) + epsilon * torch.sigmoid(t)


@register("sce")
def sce(output: Tensor, target: Tensor, *, alpha: float = 0.1, beta: float = 1.0) -> Tensor:
    """Symmetric cross-entropy ``alpha CE + beta RCE``, ``RCE = -A (1 - p_y)`` with ``A = -4``."""
    t = _margin("sce", output, target)
    return alpha * softplus(t) - beta * SCE_LOG_ZERO * torch.sigmoid(t)


@register("mae_prob")
def mae_prob(output: Tensor, target: Tensor) -> Tensor:
    """MAE between ``softmax`` and the one-hot target: ``sum_k |p_k - e_k| = 2 (1 - p_y)``."""
    return 2.0 * torch.sigmoid(_margin("mae_prob", output, target))


@register("gce")
def gce(output: Tensor, target: Tensor, *, q: float = 0.7) -> Tensor:
    """Generalised cross-entropy ``(1 - p_y**q) / q``: CE as ``q -> 0``, MAE / 2 at ``q = 1``."""
    t = _margin("gce", output, target)
    return -torch.expm1(-q * softplus(t)) / q


@register("brier")
def brier(output: Tensor, target: Tensor) -> Tensor:
    """Brier score ``sum_k (p_k - e_k)**2``: squared error on the probabilities, in ``[0, 2]``."""
    index = class_targets("brier", output, target)
    others = torch.softmax(output, dim=1).scatter(1, index, 0.0)
    return torch.sigmoid(_margin("brier", output, target)).square() + others.square().sum(dim=1)
