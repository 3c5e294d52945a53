"""Equal weighting, the baseline every benchmark compares against.

It lives apart from the torchjd-based scalarizers so that ``wrap(..., policy="ew")`` imports no
solver: every weight is 1, which needs no scalarizer.

>>> import torch
>>> EW().weigh(torch.tensor([0.5, 2.0]))
tensor([1., 1.])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lossrag.weighting.base import LossMethod, register_method

__all__ = ["EW"]


@register_method
class EW(LossMethod):
    """Equal weighting: the plain sum of the task losses (every weight is 1). Stateless."""

    name = "ew"
    reads_losses = False
    unit_weights = True

    def weigh(self, losses: Tensor) -> Tensor:
        """``∂(Σ L_i)/∂L_i = 1`` for every term."""
        return torch.ones_like(losses.detach())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore (states written when EW wrapped torchjd's ``Sum`` hold only an
        empty ``scalarizer`` entry)."""
