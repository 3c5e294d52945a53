"""``qm9`` and ``qm9-raw``: 11-target molecular property regression (Nash-MTL / FAMO targets)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import PositiveInt
from torch import Tensor, nn

from lossrag.bench.data.qm9 import QM9_TARGETS, load_qm9_arrays
from lossrag.bench.problems.base import (
    Budget,
    Problem,
    Split,
    Splits,
    register_problem,
    split_sizes,
    standardize,
)
from lossrag.models import mlp_trunk
from lossrag.tasks import Task

__all__ = ["METRIC_UNITS", "FusedHeadMLP", "QM9Problem"]

#: Factor from PyG units to the units Nash-MTL reports (meV for the seven energies).
METRIC_UNITS: dict[str, float] = {
    name: 1000.0 if name in ("homo", "lumo", "zpve", "u0", "u", "h", "g") else 1.0
    for name in QM9_TARGETS
}


class FusedHeadMLP(nn.Module):
    """A ReLU MLP trunk (``.trunk``) and one ``Linear(width, T)`` giving T scalar outputs.

    Equivalent to T scalar linear heads (row ``i`` of the head only receives task ``i``'s
    gradient) but one matrix product instead of T small ones.

    Args:
        in_dim: Input features.
        hidden: Widths of the trunk's hidden layers.
        names: Task names, one output column each, in order.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], names: Sequence[str]) -> None:
        super().__init__()
        self.trunk = mlp_trunk(in_dim, hidden)
        self.head = nn.Linear(hidden[-1], len(names))
        self.names = list(names)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Return ``{task name: (B,) output}``."""
        out = self.head(self.trunk(x))
        return {name: out[:, i] for i, name in enumerate(self.names)}


class QM9Problem(Problem):
    """QM9 -> μ, α, HOMO, LUMO, ⟨R²⟩, ZPVE, U0, U, H, G (atomization energies) and c_v.

    Inputs are 35 descriptors (Coulomb-matrix eigenvalues, element and atom counts), z-scored.
    Targets are z-scored (``raw=False``, loss scales comparable) or kept in raw PyG units
    (``raw=True``: eV, D, bohr³…, loss scales spanning about 10⁵). Either way the metric is the
    MAE in Nash-MTL's units (meV for the seven energies). Split as in Nash-MTL: ``n_test`` and
    ``n_val`` molecules at random, training on ``n_train`` of the rest (``None``: all of it).

    Attributes:
        n_train, n_val, n_test: Split sizes.
        raw: Train on raw-unit targets instead of z-scores.
    """

    family: Literal["qm9"] = "qm9"
    budget: Budget = Budget(epochs=20, batch_size=256)
    hidden: tuple[PositiveInt, ...] = (256, 256, 256)
    n_train: PositiveInt | None = 30000
    n_val: PositiveInt = 10000
    n_test: PositiveInt = 10000
    raw: bool = False

    @property
    def in_dim(self) -> int:
        """35 descriptors."""
        return 35

    def _make_tasks(self) -> list[Task]:
        return [Task(name, kind="regression", metric="mae") for name in QM9_TARGETS]

    def _make_model(self) -> nn.Module:
        return FusedHeadMLP(self.in_dim, self.hidden, list(QM9_TARGETS))

    def load(self, seed: int) -> Splits:
        """Split the molecules from ``seed``, z-score inputs (and targets unless ``raw``).

        Raises:
            MissingDataError: qm9pack is not installed (says how to install it).
        """
        arrays = load_qm9_arrays()
        features, targets = arrays["features"], arrays["targets"]
        total = len(features)
        rest = total - self.n_val - self.n_test
        n_train = rest if self.n_train is None else self.n_train
        split_sizes(self.name, total, [n_train, self.n_val, self.n_test])
        order = self.rng(seed).permutation(total)
        test = order[: self.n_test]
        val = order[self.n_test : self.n_test + self.n_val]
        train = order[self.n_test + self.n_val :][:n_train]
        _, _, xs = standardize(features[train].astype(np.float64), features[val], features[test])
        names = list(QM9_TARGETS)
        if self.raw:
            ys = [targets[train], targets[val], targets[test]]
            scale = dict(METRIC_UNITS)
        else:
            _, std, ys = standardize(targets[train], targets[val], targets[test])
            scale = {name: float(std[j]) * METRIC_UNITS[name] for j, name in enumerate(names)}
        parts = []
        for x, y in zip(xs, ys, strict=True):
            y32 = torch.from_numpy(y.astype(np.float32))
            parts.append(
                Split(
                    torch.from_numpy(x.astype(np.float32)),
                    {name: y32[:, j].contiguous() for j, name in enumerate(names)},
                    scale,
                )
            )
        return Splits(parts[0], parts[1], parts[2])


@register_problem(
    "qm9",
    description="QM9, 11 regression targets on z-scores, MAE in Nash-MTL units",
    source="pip: qm9pack==1.0.3",
)
def qm9() -> QM9Problem:
    """The standard 11-task QM9 problem."""
    return QM9Problem()


@register_problem(
    "qm9-raw",
    description="QM9 on raw-unit targets: loss scales span about 10⁵ (loss-scale stress)",
    source="pip: qm9pack==1.0.3",
)
def qm9_raw() -> QM9Problem:
    """QM9 with raw-unit targets."""
    return QM9Problem(raw=True)
