"""Regression losses on the residual ``r = output - target``: squared, absolute, likelihoods.

Every function takes ``output`` and ``target`` of one shape, ``(B,)`` or ``(B, D)``, and returns
``(B,)``: the element-wise loss averaged over the trailing dimensions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lossrag.losses._checks import per_sample, residual, softplus
from lossrag.losses._registry import register

__all__ = ["gaussian_nll", "huber", "l1", "l2", "logcosh", "pinball", "smooth_l1", "student_t_nll"]


@register("l2")
def l2(output: Tensor, target: Tensor) -> Tensor:
    """Squared error ``r**2`` (``torch.nn.MSELoss`` without reduction)."""
    return per_sample(residual("l2", output, target).square())


@register("l1")
def l1(output: Tensor, target: Tensor) -> Tensor:
    """Absolute error ``|r|`` (``torch.nn.L1Loss`` without reduction)."""
    return per_sample(residual("l1", output, target).abs())


@register("huber")
def huber(output: Tensor, target: Tensor, *, delta: float = 1.0) -> Tensor:
    """Huber loss: ``r**2 / 2`` for ``|r| <= delta``, ``delta * (|r| - delta / 2)`` beyond."""
    a = residual("huber", output, target).abs()
    quadratic = a.clamp(max=delta)
    return per_sample(quadratic * (a - 0.5 * quadratic))


@register("smooth_l1")
def smooth_l1(output: Tensor, target: Tensor, *, beta: float = 1.0) -> Tensor:
    """Smooth L1 = Huber / beta: ``r**2 / (2 beta)`` for ``|r| < beta``, else ``|r| - beta / 2``."""
    a = residual("smooth_l1", output, target).abs()
    quadratic = a.clamp(max=beta)
    return per_sample(quadratic * (a - 0.5 * quadratic) / beta)


@register("logcosh")
def logcosh(output: Tensor, target: Tensor, *, scale: float = 1.0) -> Tensor:
    """``scale**2 * log(cosh(r / scale))``: ``r**2 / 2`` near zero, ``scale * |r|`` in the tails."""
    a = residual("logcosh", output, target).abs() / scale
    # Small a: log cosh a = log1p(2 sinh(a/2)^2), accurate. Large a: a + log1p(exp(-2a)) - log 2.
    small = a.clamp(max=1.0)
    near = torch.log1p(2.0 * torch.sinh(0.5 * small).square())
    far = a + softplus(-2.0 * a) - math.log(2.0)
    return per_sample(scale**2 * torch.where(a < 1.0, near, far))


@register("pinball")
def pinball(output: Tensor, target: Tensor, *, tau: float = 0.5) -> Tensor:
    """Quantile (pinball) loss of quantile ``tau``: ``max(tau * u, (tau - 1) * u)``, ``u = -r``."""
    u = -residual("pinball", output, target)
    return per_sample(torch.maximum(tau * u, (tau - 1.0) * u))


@register("gaussian_nll")
def gaussian_nll(output: Tensor, target: Tensor, *, sigma: float = 1.0) -> Tensor:
    """Gaussian negative log-likelihood with fixed ``sigma``, constant included."""
    r = residual("gaussian_nll", output, target)
    const = 0.5 * math.log(2.0 * math.pi * sigma**2)
    return per_sample(const + 0.5 * (r / sigma).square())


@register("student_t_nll")
def student_t_nll(output: Tensor, target: Tensor, *, nu: float = 4.0, sigma: float = 1.0) -> Tensor:
    """Student-t negative log-likelihood (``nu`` degrees of freedom, scale ``sigma``)."""
    r = residual("student_t_nll", output, target)
    const = (
        math.lgamma(0.5 * nu)
        - math.lgamma(0.5 * (nu + 1.0))
        + 0.5 * math.log(nu * math.pi)
        + math.log(sigma)
    )
    return per_sample(const + 0.5 * (nu + 1.0) * torch.log1p((r / sigma).square() / nu))
