"""Shared fixtures: a small multi-task problem on scikit-learn's digits."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from sklearn.datasets import load_digits

from lossrag import Task
from lossrag.models import MultiTaskMLP

torch.set_num_threads(1)


@dataclass
class Digits:
    """Digits as three tasks: digit (CE), parity (CE) and pixel mean (regression)."""

    x: torch.Tensor
    y: dict[str, torch.Tensor]
    tasks: list[Task]

    def batch(self, i: int, size: int = 32) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = self.x.shape[0]
        idx = torch.arange(i * size, (i + 1) * size) % n
        return self.x[idx], {k: v[idx] for k, v in self.y.items()}

    def model(self, seed: int = 0, batchnorm: bool = False) -> MultiTaskMLP:
        torch.manual_seed(seed)
        m = MultiTaskMLP(64, [32, 16], self.tasks)
        if batchnorm:
            m.trunk.insert(2, torch.nn.BatchNorm1d(32))
        return m


@pytest.fixture(scope="session")
def digits() -> Digits:
    data = load_digits()
    x = torch.tensor(data.data[:512], dtype=torch.float32) / 16.0
    label = torch.tensor(data.target[:512], dtype=torch.long)
    y = {"digit": label, "parity": label % 2, "ink": x.mean(dim=1) * 4}
    tasks = [
        Task("digit", kind="classification", num_classes=10),
        Task("parity", kind="classification", num_classes=2),
        Task("ink", kind="regression", metric="mae"),
    ]
    return Digits(x, y, tasks)


@pytest.fixture(scope="session")
def only_regression():
    """The shipped library's index restricted to its regression losses."""
    from lossrag.index import LossIndex, default_index

    index = default_index()
    return LossIndex(
        [e for e in index.entries if e.kind == "regression"],
        index.vectors[index.rows_of("regression")],
        index.normaliser,
        index.fingerprint,
    )
