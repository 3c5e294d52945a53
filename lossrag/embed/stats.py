"""Scale-free gradient statistics of a loss: its shape signature and its probe statistics.

Only elasticities, ratios, cosines and rank statistics are used, never raw norms, so the numbers
of one loss agree across models, problems and target scales.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lossrag.embed.probe import DIFFICULTY

__all__ = [
    "PROBE_STATS",
    "SIGNATURE",
    "Reference",
    "log_gsnr",
    "output_gradients",
    "probe_statistics",
    "signature",
]

#: Names of the shape-signature block: six elasticities between neighbouring grid points, then
#: the asymmetry between over- and under-prediction (regression) or positives and negatives
#: (multilabel), 0 for the other kinds.
SIGNATURE: tuple[str, ...] = (*(f"elasticity_{i}" for i in range(6)), "asymmetry")
#: Names of the probe-statistics block.
PROBE_STATS: tuple[str, ...] = (
    "log_norm_ratio",  # log of (mean ‖∂ℓ/∂z‖ / |mean ℓ|) over the same for the probe loss
    "hard_emphasis",  # Spearman ρ of per-sample gradient norm vs the probe loss (difficulty)
    "gini",  # Gini coefficient of the per-sample gradient norms
    "log_q90_q50",  # concentration: log(q90 / q50) of the per-sample gradient norms
    "cos_output",  # cosine with the probe loss's gradient in output space
    "cos_head",  # cosine with the probe loss's gradient at the head's input
    "log_gsnr",  # log gradient signal-to-noise over the samples, at the head's input
)

_CLIP = 3.0
_TINY = 1e-12

LossCall = Callable[[Tensor, Tensor], Tensor]


def _per_sample_sum(values: Tensor, batch: int) -> Tensor:
    """Sum of per-sample losses; a per-batch loss (0-dim, a mean) counts ``batch`` times."""
    return values * batch if values.dim() == 0 else values.sum()


def signature(loss: LossCall, kind: str) -> list[float]:
    """The model-free shape signature of ``loss``: how its output-space gradient grows with the
    difficulty of a sample (``d log‖∂ℓ/∂z‖ / d log x`` on :data:`DIFFICULTY`), clipped to ±3."""
    with torch.enable_grad():
        return _signature(loss, kind)


def _signature(loss: LossCall, kind: str) -> list[float]:
    x = torch.tensor(DIFFICULTY[kind], dtype=torch.float64)
    asym = 0.0
    if kind == "regression":
        z = torch.cat([x, -x]).requires_grad_(True)
        (g,) = torch.autograd.grad(loss(z, torch.zeros_like(z)).sum(), z)
        pos, neg = g[: len(x)].abs(), g[len(x) :].abs()
        norms = (pos + neg) / 2
        asym = _log_ratio(pos[3], neg[3])
    elif kind == "classification":
        c = 10
        logits = torch.zeros(len(x), c, dtype=torch.float64)
        logits[:, 0] = torch.log((1 - x) / x * (c - 1))
        logits.requires_grad_(True)
        (g,) = torch.autograd.grad(
            loss(logits, torch.zeros(len(x), dtype=torch.long)).sum(), logits
        )
        norms = g.norm(dim=1)
    elif kind == "multilabel":
        c = 8
        z = torch.log((1 - x) / x).repeat_interleave(c).view(len(x), c)
        z = torch.cat([z, -z]).requires_grad_(True)
        t = torch.cat([torch.ones(len(x), c), torch.zeros(len(x), c)]).to(z)
        (g,) = torch.autograd.grad(loss(z, t).sum(), z)
        pos, neg = g[: len(x)].norm(dim=1), g[len(x) :].norm(dim=1)
        norms = (pos + neg) / 2
        asym = _log_ratio(pos[3], neg[3])
    elif kind == "representation":
        gen = torch.Generator().manual_seed(0)
        labels = torch.arange(64) % 8
        centres = F.normalize(torch.randn(8, 16, generator=gen, dtype=torch.float64), dim=1)
        noise = torch.randn(64, 16, generator=gen, dtype=torch.float64) / 4
        rows = []
        for scale in x.tolist():
            f = (centres[labels] + scale * noise).requires_grad_(True)
            (g,) = torch.autograd.grad(_per_sample_sum(loss(f, labels), 64), f)
            rows.append(g.norm(dim=1).mean())
        norms = torch.stack(rows)
    else:
        raise ValueError(f"No shape signature for task kind {kind!r}.")
    logs = torch.log(norms.clamp_min(_TINY))
    elasticity = (logs.diff() / torch.log(x).diff()).clamp(-_CLIP, _CLIP)
    return [*elasticity.tolist(), asym]


def _log_ratio(a: Tensor, b: Tensor) -> float:
    value = float(torch.log(a.clamp_min(_TINY)) - torch.log(b.clamp_min(_TINY)))
    return max(-_CLIP, min(_CLIP, value))


def output_gradients(
    losses: Sequence[LossCall], outputs: Tensor, targets: Tensor
) -> list[tuple[Tensor, Tensor]]:
    """Per loss, its per-sample values (or its batch value) and per-sample gradients
    ``∂ℓ_b/∂z_b`` at detached ``outputs`` (a per-batch loss's gradient is scaled by the batch
    size). One backward for all: each loss sees its own copy of the outputs, and the sum passes
    each an incoming gradient of exactly 1, so each gradient is the one it has alone."""
    zs = [outputs.detach().requires_grad_(True) for _ in losses]
    with torch.enable_grad():
        values = [loss(z, targets) for loss, z in zip(losses, zs, strict=True)]
        total = functools.reduce(
            operator.add, (_per_sample_sum(v, len(z)) for v, z in zip(values, zs, strict=True))
        )
        grads = torch.autograd.grad(total, zs)
    return [(v.detach(), g.reshape(len(g), -1)) for v, g in zip(values, grads, strict=True)]


@dataclass(frozen=True)
class Reference:
    """The probe loss's side of :func:`probe_statistics` on one batch, computed once for all
    the losses compared with it.

    Attributes:
        scale: ``mean ‖∂ℓ/∂z‖ / |mean ℓ|`` of the probe loss.
        ranks, ranks_norm: Its per-sample values' ranks, centred (for Spearman's ρ), and
            their norm.
        out_grad, head_grad: Its flattened gradients at the outputs and at the head's input.
        out_norm, head_norm: Their norms.
    """

    scale: float
    ranks: Tensor
    ranks_norm: Tensor
    out_grad: Tensor
    out_norm: Tensor
    head_grad: Tensor
    head_norm: Tensor

    @classmethod
    def of(cls, values: Tensor, out_grad: Tensor, head_grad: Tensor) -> Reference:
        """The reference of the probe loss's ``values``, output and head gradients (shapes as
        in :func:`probe_statistics`)."""
        norms = out_grad.norm(dim=1)
        scale = norms.mean() / values.mean().abs().clamp_min(_TINY)
        ranks = _centred_ranks(values).flatten()
        out, head = out_grad.flatten(), head_grad.flatten()
        return cls(float(scale), ranks, ranks.norm(), out, out.norm(), head, head.norm())


def probe_statistics(
    values: Tensor, out_grad: Tensor, head_grad: Tensor, ref: Reference
) -> list[float]:
    """The :data:`PROBE_STATS` of a loss against the probe loss (``ref``) on the same batch.

    Args:
        values: The loss's per-sample values ``(B,)`` or its batch value.
        out_grad: ``(B, out)`` per-sample gradients with respect to the outputs.
        head_grad: ``(B, d)`` per-sample gradients with respect to the head's input.
        ref: The same for the probe loss (:meth:`Reference.of`).
    """
    norms = out_grad.norm(dim=1)
    scale = norms.mean() / values.mean().abs().clamp_min(_TINY)
    ordered = norms.sort().values
    q50, q90 = (float(ordered[int(q * (len(ordered) - 1))]) for q in (0.5, 0.9))
    stats = [
        math.log((float(scale) + _TINY) / (ref.scale + _TINY)),
        _cosine(_centred_ranks(norms).flatten(), ref.ranks, ref.ranks_norm),
        _gini(ordered),
        math.log((q90 + 1e-9) / (q50 + 1e-9)),
        _cosine(out_grad.flatten(), ref.out_grad, ref.out_norm),
        _cosine(head_grad.flatten(), ref.head_grad, ref.head_norm),
        log_gsnr(head_grad),
    ]
    return [max(-10.0, min(10.0, s)) if math.isfinite(s) else 0.0 for s in stats]


def _cosine(a: Tensor, b: Tensor, b_norm: Tensor) -> float:
    """Cosine of flat ``a`` and ``b`` (``b_norm`` its norm)."""
    denom = float(a.norm() * b_norm)
    return float(a @ b) / denom if denom > 0 else 0.0


def _centred_ranks(values: Tensor) -> Tensor:
    """Ranks of ``values`` minus their mean, in float64 (Spearman's ρ is their cosine)."""
    ranks = values.argsort().argsort().to(torch.float64)
    return ranks - ranks.mean()


def _gini(ordered: Tensor) -> float:
    """Gini coefficient of non-negative values sorted ascending."""
    total = float(ordered.sum())
    if total <= 0:
        return 0.0
    n = len(ordered)
    ranks = torch.arange(1, n + 1, dtype=ordered.dtype, device=ordered.device)
    return float(((2 * ranks - n - 1) * ordered).sum()) / (n * total)


def log_gsnr(rows: Tensor) -> float:
    """Gradient signal-to-noise of per-sample gradient ``rows`` ``(B, d)``: log of ‖mean‖² over the
    variance of the batch mean (``Σ_d Var_b / B``), i.e. micro-batches of one; clipped to ±20."""
    x = rows.flatten(1).double()  # centred sums in float64: several times faster than var(0)
    mean = x.mean(0)
    signal = float(mean.pow(2).sum())
    b = len(x)
    noise = float((x - mean).pow(2).sum()) / ((b - 1) * b) if b > 1 else 0.0
    return max(-20.0, min(20.0, math.log((signal + _TINY) / (noise + _TINY))))
