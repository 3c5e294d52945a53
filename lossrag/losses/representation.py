"""Representation losses on shared features ``(B, ...)`` and integer labels ``(B,)``.

Samples with the same label are positives of each other, samples with another label negatives;
a sample is never its own positive. Features are flattened to ``(B, F)``; the contrastive and
metric losses L2-normalise them first, so they depend on directions only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lossrag.losses._checks import features_labels
from lossrag.losses._registry import register

__all__ = ["infonce", "supcon", "triplet", "triplet_all", "varcov"]

#: VICReg's epsilon inside the standard deviation (Bardes et al., 2022).
VARCOV_EPS = 1e-4


def _pairs(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Masks ``(B, B)`` of positive pairs (same label, not the diagonal) and negative pairs."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _cosine_logits(features: Tensor, temperature: float) -> Tensor:
    z = F.normalize(features, dim=1)
    return z @ z.T / temperature


def _distances(features: Tensor) -> Tensor:
    """Exact pairwise Euclidean distances of the normalised features (at least float32 inside)."""
    z = F.normalize(features.to(torch.promote_types(features.dtype, torch.float32)), dim=1)
    d = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")
    return d.to(features.dtype)


def _masked_logsumexp(logits: Tensor, keep: Tensor) -> Tensor:
    """Row-wise log-sum-exp over ``keep``; ``finfo.min``, not -inf, keeps empty rows finite."""
    return logits.masked_fill(~keep, torch.finfo(logits.dtype).min).logsumexp(dim=1)


@register("supcon")
def supcon(output: Tensor, target: Tensor, *, temperature: float = 0.1) -> Tensor:
    """Supervised contrastive loss (``L_out``) per anchor; 0 for an anchor without positive.

    ``l_i = -mean_{p in P(i)} log(exp(s_ip / t) / sum_{a != i} exp(s_ia / t))``, ``s`` the cosine.
    """
    z, labels = features_labels("supcon", output, target)
    positive, _ = _pairs(labels)
    logits = _cosine_logits(z, temperature)
    others = ~torch.eye(len(labels), dtype=torch.bool, device=z.device)
    log_prob = logits - _masked_logsumexp(logits, others).unsqueeze(1)
    total = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    return -total / positive.sum(dim=1).clamp(min=1)


def _next_positive(labels: Tensor) -> tuple[Tensor, Tensor]:
    """For each anchor, the index of the next sample of its class in cyclic batch order."""
    b = len(labels)
    idx = torch.arange(b, device=labels.device)
    positive, _ = _pairs(labels)
    offset = (idx.unsqueeze(0) - idx.unsqueeze(1)) % b
    offset = offset.masked_fill(~positive, b)
    steps, _ = offset.min(dim=1)
    return (idx + steps) % b, steps < b


@register("infonce")
def infonce(output: Tensor, target: Tensor, *, temperature: float = 0.1) -> Tensor:
    """InfoNCE with one positive per anchor, averaged over anchors that have one (0-dim).

    The positive of anchor ``i`` is the next sample of its class in cyclic batch order; the
    candidates of its softmax are that positive and every sample of another class.
    """
    z, labels = features_labels("infonce", output, target)
    logits = _cosine_logits(z, temperature)
    partner, has_positive = _next_positive(labels)
    _, negative = _pairs(labels)
    chosen = F.one_hot(partner, len(labels)).bool() & has_positive.unsqueeze(1)
    per_anchor = _masked_logsumexp(logits, negative | chosen)
    per_anchor = per_anchor - logits.gather(1, partner.unsqueeze(1)).squeeze(1)
    per_anchor = torch.where(has_positive, per_anchor, torch.zeros_like(per_anchor))
    return per_anchor.sum() / has_positive.sum().clamp(min=1)


@register("triplet")
def triplet(output: Tensor, target: Tensor, *, margin: float = 0.2) -> Tensor:
    """Batch-hard triplet loss ``relu(margin + max_p d_ip - min_n d_in)`` per anchor.

    ``d`` is the Euclidean distance of L2-normalised features; anchors without a positive or a
    negative in the batch get 0.
    """
    z, labels = features_labels("triplet", output, target)
    positive, negative = _pairs(labels)
    d = _distances(z)
    hardest_positive = torch.where(positive, d, torch.zeros_like(d)).amax(dim=1)
    hardest_negative = torch.where(negative, d, torch.full_like(d, 4.0)).amin(dim=1)
    valid = positive.any(dim=1) & negative.any(dim=1)
    hinge = F.relu(margin + hardest_positive - hardest_negative)
    return torch.where(valid, hinge, torch.zeros_like(hinge))


@register("triplet_all")
def triplet_all(output: Tensor, target: Tensor, *, margin: float = 0.2) -> Tensor:
    """Batch-all triplet loss: per anchor, ``relu(margin + d_ip - d_in)`` averaged over all (p, n).

    ``d`` as in ``triplet``; anchors without a positive or a negative get 0.
    """
    z, labels = features_labels("triplet_all", output, target)
    positive, negative = _pairs(labels)
    d = _distances(z)
    valid = positive.unsqueeze(2) & negative.unsqueeze(1)  # (anchor, positive, negative)
    hinge = F.relu(margin + d.unsqueeze(2) - d.unsqueeze(1))
    total = torch.where(valid, hinge, torch.zeros_like(hinge)).sum(dim=(1, 2))
    return total / valid.sum(dim=(1, 2)).clamp(min=1)


@register("varcov")
def varcov(
    output: Tensor, target: Tensor, *, gamma: float = 1.0, cov_weight: float = 0.04
) -> Tensor:
    """VICReg variance + covariance regulariser of the batch (0-dim); labels are not used.

    ``mean_j relu(gamma - sqrt(Var z_j + 1e-4)) + cov_weight * sum_{i != j} C_ij**2 / F``.
    """
    z, _ = features_labels("varcov", output, target)
    b, f = z.shape
    if b < 2:
        return z.sum() * 0.0
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (b - 1)
    std = torch.sqrt(torch.diagonal(cov) + VARCOV_EPS)
    variance = F.relu(gamma - std).mean()
    off_diagonal = cov.masked_fill(torch.eye(f, dtype=torch.bool, device=z.device), 0.0)
    return variance + cov_weight * off_diagonal.square().sum() / f
