"""The learned correction Δφ: a permutation-equivariant network over candidate terms."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Correction"]


class Correction(nn.Module):
    """``Δφ(x_c) = ρ([φ(x_c), mean_{task(c)} φ, mean_all φ])``: one score per candidate.

    Each candidate is encoded alone, then sees the mean encoding of its own task's candidates and
    of all candidates, so the output follows any permutation of the candidates and works for any
    number of tasks and candidates. The last layer starts at zero: an untrained correction adds
    nothing to the prior. The output is bounded by ``bound`` (a smooth clip), so a correction
    re-allocates weight around the prior by at most a factor ``e^{2·bound}`` between two terms.

    Args:
        in_dim: Features per candidate.
        hidden: Width of the encodings.
        bound: Largest correction, in logits.
    """

    def __init__(self, in_dim: int, hidden: int = 32, bound: float = 1.0) -> None:
        super().__init__()
        self.hidden, self.bound = hidden, bound
        self.phi = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh())
        self.rho = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        last = self.rho[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor, group: Tensor) -> Tensor:
        """Scores ``(n,)`` of candidates ``x`` ``(n, in_dim)``; ``group`` ``(n,)`` their task."""
        h = self.phi(x)
        groups = int(group.max()) + 1 if len(group) else 0
        sums = h.new_zeros(groups, h.shape[1]).index_add_(0, group, h)
        counts = torch.bincount(group, minlength=groups).clamp_min(1).unsqueeze(1).to(h)
        per_task = (sums / counts)[group]
        everyone = h.mean(0, keepdim=True).expand_as(h)
        raw = self.rho(torch.cat([h, per_task, everyone], dim=1)).squeeze(1)
        return self.bound * torch.tanh(raw / self.bound)
