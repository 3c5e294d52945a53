"""The min-norm point of the convex hull of a few vectors: the common descent direction of
several objectives (MGDA's direction; MetaWeighting and the policy's per-task meta-objective).

>>> import torch
>>> common_direction(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
tensor([0.5000, 0.5000], dtype=torch.float64)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["common_direction"]


def common_direction(rows: Tensor) -> Tensor:
    """The min-norm point of the convex hull of the rows ``d_t`` (``(T, K)``), in float64: the
    direction that decreases every objective when one exists (solved by torchjd's MGDA)."""
    from torchjd.aggregation import MGDA  # here: torchjd's solvers are slow to import

    return MGDA()(rows.to(torch.float64))
