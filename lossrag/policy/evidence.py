"""Corruption evidence: gross errors in a task's targets, and which losses follow them.

A clean regression task, even a hard one, has residuals ``e_i = y_i − t_i`` whose tails stay
within a few robust standard deviations of their median (measured on QM9's eleven targets while
EW trains: at most 0.6 % of the samples beyond 6 of them). Gross errors in the training targets
(a sensor glitch, a unit mix-up, a wrong label) put a separate cluster far beyond (15 % of outliers
on ``mnist1d-outliers``: 5–9 % of the samples beyond 6). So the *gross share*, the share of
samples whose residual is more than :data:`GROSS_Z` robust standard deviations
(``1.4826·MAD``) from the median residual, tells corruption from difficulty.

A clean classification task, even a hard one, puts a wrong label's class near the top of the
model's ranking: it confuses a shirt with a T-shirt, not with a boot. A flipped label (label noise)
is any class, so once the model has learnt something (``p_max ≥`` :data:`CONFIDENT`) about half of
the flipped labels rank in the lower half of its classes (:func:`mislabel_mask`; the task's
evidence counts them twice, :func:`corrupted_share`). Labels of rare
classes are not counted: under class imbalance the model ranks them low without any noise
(``mnist1d-imbalanced``, 50:1: 2-6 % of its samples, 0-1 % without the rare classes). Measured
while EW trains, on training batches: 40 % flipped labels (``multifashion-noisy``) mark 4-12 % of
the samples; the clean classification tasks of the suite at most 3 % (``mnist1d``'s and
``digits``' early in training), mostly under 1 %. Tasks with fewer than four classes carry no such
evidence.

Whether a candidate loss would be misled by them is measured on the model as well: the share of
the loss's per-sample gradient (with respect to the task's output) that goes to those samples.
For L2 it grows with their residuals; a robust loss (L1, Huber, Cauchy, ...) caps or drops it.
For cross-entropy a flipped label draws a gradient near its largest; GCE or MAE on probabilities
scale it down by ``p_y``.

The task's declared metric rules candidates out: every regression metric (MAE, MSE, RMSE)
penalises an error of ``+r`` and ``−r`` alike, so a loss that does not (a pinball loss at
``τ ≠ 0.5`` estimates a quantile, not a centre; it is also the loss gross errors on one side
mislead least) is not a candidate for a regression task (:func:`metric_aligned`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "CONFIDENT",
    "GROSS_Z",
    "MIN_CLASSES",
    "asymmetry",
    "corrupted_share",
    "corruption_mask",
    "gradient_share",
    "gross_mask",
    "metric_aligned",
    "mislabel_mask",
]

#: Robust standard deviations beyond which a residual counts as a gross error.
GROSS_Z = 6.0
#: Top class probability from which the model's ranking of a sample's label is read.
CONFIDENT = 0.3
#: Fewest classes for which a label's rank tells a flipped label from a confused one.
MIN_CLASSES = 4
#: Scale of the median absolute deviation of a normal distribution (its robust σ).
_MAD_SIGMA = 1.4826


def _per_sample(residual: Tensor) -> Tensor:
    """One value per sample: the residual itself for a scalar target, else its RMS."""
    if residual.dim() <= 1:
        return residual.reshape(-1)
    return residual.reshape(residual.shape[0], -1).pow(2).mean(1).sqrt()


def gross_mask(output: Tensor, target: Tensor) -> Tensor:
    """The samples whose residual is more than :data:`GROSS_Z` robust standard deviations from
    the median residual (a boolean vector; none where the residuals do not vary)."""
    e = _per_sample((output.detach() - target.detach()).float())
    median = e.median()
    spread = (e - median).abs().median() * _MAD_SIGMA
    if not bool(spread > 0):
        return torch.zeros_like(e, dtype=torch.bool)
    return (e - median).abs() > GROSS_Z * spread


def mislabel_mask(output: Tensor, target: Tensor) -> Tensor:
    """The samples of a classification batch (``output`` logits ``(B, K)``, ``target`` labels
    ``(B,)``) whose label the model contradicts: its top class has probability at least
    :data:`CONFIDENT`, at least ``⌈K/2⌉`` classes rank above the label, and the label is not a
    rare class of the batch (at least half the frequency of a uniform label)."""
    p = output.detach().float().softmax(-1)
    labels = target.detach().reshape(-1).long()
    k = p.shape[1]
    p_label = p.gather(1, labels.view(-1, 1))
    above = (p > p_label).sum(1)
    frequency = torch.bincount(labels, minlength=k).to(p.dtype)[labels] / len(labels)
    return (above >= (k + 1) // 2) & (p.max(1).values >= CONFIDENT) & (frequency >= 0.5 / k)


def corruption_mask(kind: str, output: Tensor, target: Tensor) -> Tensor | None:
    """The samples a task's evidence counts as corrupted: gross errors for a regression
    (:func:`gross_mask`), contradicted labels for a classification with at least
    :data:`MIN_CLASSES` classes (:func:`mislabel_mask`); ``None`` for other tasks."""
    if kind == "regression":
        return gross_mask(output, target)
    if kind == "classification" and output.dim() == 2 and output.shape[1] >= MIN_CLASSES:
        return mislabel_mask(output, target)
    return None


def corrupted_share(kind: str, share: float) -> float:
    """The share of a task's samples (or of a loss's gradient) estimated to be corrupted from
    the share on the masked samples: the same for gross errors, twice it for flipped labels
    (:func:`mislabel_mask` finds the half of them that rank in the lower half)."""
    return min(1.0, 2.0 * share) if kind == "classification" else share


def gradient_share(per_sample: Tensor, output: Tensor, mask: Tensor) -> float:
    """The share of the per-sample gradient ``‖∂ℓ_i/∂y_i‖`` of ``per_sample`` (losses with their
    graph to ``output``) that falls on the samples of ``mask``; 0 when none is masked or the
    gradient vanishes."""
    if not bool(mask.any()):
        return 0.0
    (grad,) = torch.autograd.grad(per_sample.sum(), output, retain_graph=True)
    norms = grad.reshape(grad.shape[0], -1).float().norm(dim=1)
    total = float(norms.sum())
    return float(norms[mask].sum()) / total if total > 0 else 0.0


def asymmetry(loss: Callable[[Tensor, Tensor], Tensor]) -> float:
    """``| |g(+1)| − |g(−1)| | / (|g(+1)| + |g(−1)|)``, ``g(r)`` the gradient of ``loss`` with
    respect to the output at a residual of ``r`` standard units: 0 for a loss symmetric in the
    residual."""
    y = torch.tensor([1.0, -1.0], requires_grad=True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss(y, torch.zeros(2)).sum(), y)
    a, b = grad.abs().tolist()
    return abs(a - b) / (a + b) if a + b > 0 else 0.0


def metric_aligned(kind: str, loss: Callable[[Tensor, Tensor], Tensor]) -> bool:
    """Whether a loss can serve a task of ``kind`` under its (symmetric, for regression)
    metric: for regression, whether it is symmetric in the residual (asymmetry below 0.1)."""
    return kind != "regression" or asymmetry(loss) < 0.1
