"""Canonical probes: fixed, seeded batches on which every candidate loss is measured.

Each task kind has one probe: features ``h`` of a fixed random batch, a fixed linear head ``W``
producing the outputs the losses see, targets with a wide spread of difficulty, and a *probe
loss* that is not a library member (so no candidate is compared with itself). The same probe
losses are used on a user's model, which keeps the statistics comparable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DIFFICULTY", "Probe", "canonical_probe", "probe_loss"]

#: The difficulty grid of the shape signature, per kind: residual size (regression), 1 − p_true
#: (classification, multilabel), feature noise relative to the class separation (representation).
DIFFICULTY: dict[str, tuple[float, ...]] = {
    "regression": (0.05, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0),
    "classification": (0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99),
    "multilabel": (0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99),
    "representation": (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0),
}

_B, _D, _C, _LABELS = 256, 32, 10, 8


@dataclass(frozen=True)
class Probe:
    """A batch to measure losses on.

    Attributes:
        kind: The task kind the batch is for.
        features: ``(B, d)`` inputs of the head (the representation space of the statistics).
        head: ``(d, out)`` the linear head, or ``None`` when the outputs are the features.
        targets: What the losses compare the outputs with.
    """

    kind: str
    features: Tensor
    head: Tensor | None
    targets: Tensor

    def outputs(self) -> Tensor:
        """The outputs the losses see: ``features @ head`` (``(B,)`` for one regression output)."""
        if self.head is None:
            return self.features
        out = self.features @ self.head
        return out.squeeze(1) if self.kind == "regression" else out


def canonical_probe(kind: str, seed: int = 0) -> Probe:
    """The fixed probe batch of ``kind`` (float64; seeded, so the same on every machine)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(_B, _D, generator=g, dtype=torch.float64)
    if kind == "regression":
        w = torch.randn(_D, 1, generator=g, dtype=torch.float64) / math.sqrt(_D)
        # residual magnitudes log-uniform over [0.02, 20], random signs: every regime of the grid
        size = torch.exp(
            torch.empty(_B, dtype=torch.float64).uniform_(math.log(0.02), math.log(20), generator=g)
        )
        sign = torch.randint(0, 2, (_B,), generator=g).to(torch.float64) * 2 - 1
        return Probe(kind, h, w, (h @ w).squeeze(1) - sign * size)
    if kind == "classification":
        w = 3 * torch.randn(_D, _C, generator=g, dtype=torch.float64) / math.sqrt(_D)
        y = torch.multinomial(torch.softmax(h @ w, 1), 1, generator=g).squeeze(1)
        noisy = torch.rand(_B, generator=g) < 0.2
        y = torch.where(noisy, torch.randint(0, _C, (_B,), generator=g), y)
        return Probe(kind, h, w, y)
    if kind == "multilabel":
        w = 3 * torch.randn(_D, _LABELS, generator=g, dtype=torch.float64) / math.sqrt(_D)
        t = torch.bernoulli(torch.sigmoid(h @ w), generator=g)
        flip = torch.rand(t.shape, generator=g, dtype=torch.float64) < 0.1
        return Probe(kind, h, w, torch.where(flip, 1 - t, t))
    if kind == "representation":
        # 64 samples: the all-triplets losses are cubic in the batch size
        labels = torch.arange(64) % _LABELS
        centres = torch.randn(_LABELS, _D, generator=g, dtype=torch.float64)
        h = 1.5 * centres[labels] + torch.randn(64, _D, generator=g, dtype=torch.float64)
        w = torch.randn(_D, 16, generator=g, dtype=torch.float64) / math.sqrt(_D)
        return Probe(kind, h, w, labels)
    raise ValueError(f"No canonical probe for task kind {kind!r}.")


def probe_loss(kind: str, output: Tensor, target: Tensor) -> Tensor:
    """The per-sample reference loss of ``kind``; deliberately not a library member.

    Regression ``|r|^1.5``, classification ``(1 − p_y)^1.5``, multilabel the mean of
    ``|σ(z) − t|^1.5``, representation ``1 − cos`` to the (detached) mean of the sample's class.
    """
    if kind == "regression":
        r = (output - target).reshape(len(output), -1)
        return (r.abs() + 1e-12).pow(1.5).mean(1)
    if kind == "classification":
        p = torch.softmax(output, 1).gather(1, target.view(-1, 1).long()).squeeze(1)
        return (1 - p).clamp_min(1e-12).pow(1.5)
    if kind == "multilabel":
        return ((torch.sigmoid(output) - target).abs() + 1e-12).pow(1.5).mean(1)
    if kind == "representation":
        z = F.normalize(output.flatten(1), dim=1)
        labels = target.long()
        onehot = F.one_hot(labels, int(labels.max()) + 1).to(z.dtype)
        centres = F.normalize(onehot.T @ z.detach(), dim=1)
        return 1 - (z * centres[labels]).sum(1)
    raise ValueError(f"No probe loss for task kind {kind!r}.")
