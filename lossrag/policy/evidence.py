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
the flipped labels rank in the lower half of its classes (:func:`mislabel_mask`), and the
evidence counts them twice (:class:`Corruption`). Only labels of classes at least as frequent in
the batch as a uniform label are counted, and the share is taken among them: under class
imbalance the model ranks the rare classes low without any noise (``mnist1d-imbalanced``, 50:1,
while EW trains: 2-6 % of all its samples, under 0.6 % of those counted). Measured while EW
trains, on training batches: 40 % flipped labels (``multifashion-noisy``) mark 4-11 % of the
counted samples; the clean classification tasks of the suite at most 3 % (``mnist1d``'s and
``digits``' early in training), mostly under 1 %. So the prior's floor for this evidence
(``label_floor``, 0.04 of estimated flips) is its own. Tasks with fewer than four classes carry
no such evidence.

Whether a candidate loss would be misled by them is measured on the model as well: the share of
the loss's per-sample gradient (with respect to the task's output) that goes to those samples.
For L2 it grows with their residuals; a robust loss (L1, Huber, Cauchy, ...) caps or drops it.
For cross-entropy a flipped label draws a gradient near its largest; GCE or MAE on probabilities
scale it down by ``p_y`` (:func:`relief` compares a candidate with the natural loss).

The task's declared metric rules candidates out: every regression metric (MAE, MSE, RMSE)
penalises an error of ``+r`` and ``−r`` alike, so a loss that does not (a pinball loss at
``τ ≠ 0.5`` estimates a quantile, not a centre; it is also the loss gross errors on one side
mislead least) is not a candidate for a regression task (:func:`metric_aligned`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lossrag.embed.stats import output_gradients

__all__ = [
    "CONFIDENT",
    "GROSS_Z",
    "MIN_CLASSES",
    "Corruption",
    "asymmetry",
    "corruption",
    "gradient_shares",
    "gross_mask",
    "metric_aligned",
    "mislabel_mask",
    "relief",
]

LossFn = Callable[[Tensor, Tensor], Tensor]

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


def mislabel_mask(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """The samples of a classification batch (``output`` logits ``(B, K)``, ``target`` labels
    ``(B,)``) whose label the model contradicts, and those it could (``counted``: the label's
    class is at least as frequent in the batch as a uniform label). A counted label is
    contradicted where the model's top class has probability at least :data:`CONFIDENT` and at
    least ``⌈K/2⌉`` classes rank above it."""
    p = output.detach().float().softmax(-1)
    labels = target.detach().reshape(-1).long()
    k = p.shape[1]
    p_label = p.gather(1, labels.view(-1, 1))
    above = (p > p_label).sum(1)
    counted = torch.bincount(labels, minlength=k)[labels] * k >= len(labels)
    return counted & (above >= (k + 1) // 2) & (p.max(1).values >= CONFIDENT), counted


@dataclass(frozen=True)
class Corruption:
    """The samples of one batch that a task's evidence flags as corrupted.

    Attributes:
        mask: The flagged samples (boolean, one per sample).
        factor: Corrupted samples estimated per flagged one: 1 for gross errors; for flipped
            labels 2 (about half rank in the lower half) over the share of the batch that
            :func:`mislabel_mask` counts.
    """

    mask: Tensor
    factor: float = 1.0

    @property
    def share(self) -> float:
        """The estimated share of corrupted samples in the batch: the task's evidence."""
        return min(1.0, self.factor * float(self.mask.float().mean()))


def corruption(kind: str, output: Tensor, target: Tensor) -> Corruption | None:
    """The samples a task's evidence flags in a batch: gross errors for a regression
    (:func:`gross_mask`), contradicted labels for a classification with at least
    :data:`MIN_CLASSES` classes (:func:`mislabel_mask`); ``None`` for other tasks."""
    if kind == "regression":
        return Corruption(gross_mask(output, target))
    if kind == "classification" and output.dim() == 2 and output.shape[1] >= MIN_CLASSES:
        mask, counted = mislabel_mask(output, target)
        coverage = float(counted.float().mean())
        return Corruption(mask, 2.0 / coverage if coverage > 0 else 0.0)
    return None


def gradient_shares(
    losses: Sequence[LossFn], output: Tensor, target: Tensor, mask: Tensor
) -> list[float | None]:
    """Per loss, the share of its per-sample gradient ``‖∂ℓ_i/∂y_i‖`` at ``output`` that falls on
    the samples of ``mask``: 0 when none is masked or the gradient vanishes, ``None`` for a loss
    without per-sample values (the gradients: :func:`lossrag.embed.stats.output_gradients`)."""
    if not bool(mask.any()):
        return [0.0] * len(losses)
    shares: list[float | None] = []
    for values, grad in output_gradients(losses, output, target):
        norms = grad.float().norm(dim=1)
        whole = float(norms.sum())
        share = float(norms[mask].sum()) / whole if whole > 0 else 0.0
        shares.append(share if values.dim() > 0 else None)
    return shares


def relief(kind: str, natural: float, candidate: float) -> float:
    """How much less a candidate loss follows the corrupted samples than the natural loss, from
    the shares of their gradients on the flagged samples: the difference for gross errors (the
    flagged samples are the gross errors); for flipped labels the share of the natural loss's
    misled gradient that the candidate removes, ``(natural − candidate)/natural``, which does
    not depend on which fraction of the flipped labels was flagged."""
    if kind != "classification":
        return natural - candidate
    return (natural - candidate) / natural if natural > 0 else 0.0


def asymmetry(loss: LossFn) -> float:
    """``| |g(+1)| − |g(−1)| | / (|g(+1)| + |g(−1)|)``, ``g(r)`` the gradient of ``loss`` with
    respect to the output at a residual of ``r`` standard units: 0 for a loss symmetric in the
    residual."""
    y = torch.tensor([1.0, -1.0], requires_grad=True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss(y, torch.zeros(2)).sum(), y)
    a, b = grad.abs().tolist()
    return abs(a - b) / (a + b) if a + b > 0 else 0.0


def metric_aligned(kind: str, loss: LossFn) -> bool:
    """Whether a loss can serve a task of ``kind`` under its (symmetric, for regression)
    metric: for regression, whether it is symmetric in the residual (asymmetry below 0.1)."""
    return kind != "regression" or asymmetry(loss) < 0.1
