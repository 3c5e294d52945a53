"""Robust regression losses (M-estimators) with a scale: quadratic ``r**2 / 2`` near zero.

Each behaves like ``r**2 / 2`` for ``|r|`` much smaller than its scale and grows more slowly (or
saturates) in the tails, so outliers pull less. Shapes as in :mod:`lossrag.losses.regression`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lossrag.losses._checks import per_sample, residual
from lossrag.losses._registry import register

__all__ = ["cauchy", "geman_mcclure", "pseudo_huber", "tukey", "welsch"]


@register("cauchy")
def cauchy(output: Tensor, target: Tensor, *, scale: float = 1.0) -> Tensor:
    """Cauchy (Lorentzian) loss ``scale**2 / 2 * log(1 + (r / scale)**2)``: logarithmic tails."""
    u = (residual("cauchy", output, target) / scale).square()
    return per_sample(0.5 * scale**2 * torch.log1p(u))


@register("welsch")
def welsch(output: Tensor, target: Tensor, *, scale: float = 1.0) -> Tensor:
    """Welsch (Leclerc) loss ``scale**2 / 2 * (1 - exp(-(r / scale)**2))``, bounded."""
    u = (residual("welsch", output, target) / scale).square()
    return per_sample(-0.5 * scale**2 * torch.expm1(-u))


@register("geman_mcclure")
def geman_mcclure(output: Tensor, target: Tensor, *, scale: float = 1.0) -> Tensor:
    """Geman-McClure loss ``scale**2 / 2 * u / (1 + u)``, ``u = (r / scale)**2``: bounded."""
    u = (residual("geman_mcclure", output, target) / scale).square()
    return per_sample(0.5 * scale**2 * (1.0 - 1.0 / (1.0 + u)))


@register("pseudo_huber")
def pseudo_huber(output: Tensor, target: Tensor, *, delta: float = 1.0) -> Tensor:
    """Pseudo-Huber (Charbonnier) loss ``delta**2 * (sqrt(1 + (r / delta)**2) - 1)``."""
    a = residual("pseudo_huber", output, target) / delta
    # sqrt(1 + a^2) - 1 = a^2 / (sqrt(1 + a^2) + 1), exact for small a as well.
    return per_sample(delta**2 * a.square() / (torch.hypot(a, torch.ones_like(a)) + 1.0))


@register("tukey")
def tukey(output: Tensor, target: Tensor, *, c: float = 4.685) -> Tensor:
    """Tukey's biweight ``c**2 / 6 * (1 - (1 - (r / c)**2)**3)`` for ``|r| <= c``, then constant."""
    u = (residual("tukey", output, target) / c).square().clamp(max=1.0)
    return per_sample(c**2 / 6.0 * (1.0 - (1.0 - u) ** 3))
