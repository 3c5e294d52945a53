"""Multilabel losses on logits ``(B, C)`` and 0/1 targets ``(B, C)``, returning ``(B,)``.

Element-wise losses are averaged over the classes; ``soft_f1`` is a set-level score per sample.
Logs of sigmoids are written with ``softplus`` (``log sigmoid(z) = -softplus(-z)``), finite for
any logit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lossrag.losses._checks import binary_targets, safe_pow, softplus
from lossrag.losses._registry import register

__all__ = ["asymmetric", "bce", "focal_bce", "soft_f1"]


@register("bce")
def bce(output: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy on logits (``torch.nn.BCEWithLogitsLoss``), mean over the classes."""
    y = binary_targets("bce", output, target)
    return F.binary_cross_entropy_with_logits(output, y, reduction="none").mean(dim=1)


@register("focal_bce")
def focal_bce(output: Tensor, target: Tensor, *, gamma: float = 2.0, alpha: float = 0.25) -> Tensor:
    """Sigmoid focal loss ``-alpha_t (1 - p_t)**gamma log p_t``, mean over the classes.

    ``p_t`` is the probability of the true label and ``alpha_t`` is ``alpha`` for positives and
    ``1 - alpha`` for negatives.
    """
    y = binary_targets("focal_bce", output, target)
    z_t = (2.0 * y - 1.0) * output  # logit of the true label
    alpha_t = alpha * y + (1.0 - alpha) * (1.0 - y)
    weight = torch.exp(-gamma * softplus(z_t))  # (1 - p_t) ** gamma
    return (alpha_t * weight * softplus(-z_t)).mean(dim=1)


@register("asymmetric")
def asymmetric(
    output: Tensor,
    target: Tensor,
    *,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
) -> Tensor:
    """Asymmetric loss (ASL), mean over the classes.

    Positives: ``-(1 - p)**gamma_pos * log p``. Negatives: ``-p_m**gamma_neg * log(1 - p_m)`` with
    the shifted probability ``p_m = max(p - clip, 0)``, which discards easy negatives entirely.
    """
    y = binary_targets("asymmetric", output, target)
    positive = torch.exp(-gamma_pos * softplus(output)) * softplus(-output)
    if clip > 0:
        p_m = (torch.sigmoid(output) - clip).clamp(min=0.0)
        # log(1 - p_m) = log(min(sigmoid(-z) + clip, 1)), as a log-sum-exp: finite for any clip > 0.
        log_clip = torch.full_like(output, math.log(clip))
        log_rest = torch.logaddexp(-softplus(output), log_clip).clamp(max=0.0)
        negative = -safe_pow(p_m, gamma_neg) * log_rest
    else:
        negative = torch.exp(-gamma_neg * softplus(-output)) * softplus(output)
    return (y * positive + (1.0 - y) * negative).mean(dim=1)


@register("soft_f1")
def soft_f1(output: Tensor, target: Tensor, *, smooth: float = 1.0) -> Tensor:
    """Soft F1 (Dice) loss per sample: ``1 - (2 sum p y + smooth) / (sum p + sum y + smooth)``."""
    y = binary_targets("soft_f1", output, target)
    p = torch.sigmoid(output)
    overlap = (p * y).sum(dim=1)
    return 1.0 - (2.0 * overlap + smooth) / (p.sum(dim=1) + y.sum(dim=1) + smooth)
