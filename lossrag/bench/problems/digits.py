"""``digits-mtl``: scikit-learn's 8×8 digits with noisy inputs and four tasks (CI scale)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt

from lossrag.bench.data.digits import LOOP_DIGITS, load_digits_arrays
from lossrag.bench.problems.base import (
    Budget,
    Problem,
    Split,
    Splits,
    register_problem,
    split_sizes,
)
from lossrag.tasks import Task

__all__ = ["DigitsProblem"]


class DigitsProblem(Problem):
    """Noisy 8×8 digits -> digit (CE), parity (CE), has-loop (CE) and denoise (MSE on 64 pixels).

    Inputs are the pixel intensities in ``[0, 1]`` plus Gaussian noise of std ``noise``; the
    denoise target is the clean image. The 1,797 images are split at random per seed.

    Attributes:
        n_train, n_val, n_test: Split sizes (at most 1,797 in all).
        noise: Std of the input noise.
    """

    family: Literal["digits"] = "digits"
    budget: Budget = Budget(epochs=30, batch_size=64)
    hidden: tuple[PositiveInt, ...] = (128, 128)
    n_train: PositiveInt = 1077
    n_val: PositiveInt = 360
    n_test: PositiveInt = 360
    noise: float = Field(default=0.3, ge=0.0)

    @property
    def in_dim(self) -> int:
        """64 pixels."""
        return 64

    def _make_tasks(self) -> list[Task]:
        return [
            Task("digit", kind="classification", num_classes=10),
            Task("parity", kind="classification", num_classes=2),
            Task("has_loop", kind="classification", num_classes=2),
            Task("denoise", kind="regression", metric="mse"),
        ]

    def regression_dims(self) -> dict[str, int]:
        """The denoise head outputs the 64 pixels."""
        return {"denoise": 64}

    def load(self, seed: int) -> Splits:
        """Shuffle and split the digits, then add the input noise (both from ``seed``)."""
        images, labels = load_digits_arrays()
        rng = self.rng(seed)
        sizes = split_sizes(self.name, len(labels), [self.n_train, self.n_val, self.n_test])
        order = rng.permutation(len(labels))
        clean = images.reshape(len(images), -1)
        noisy = (clean + self.noise * rng.standard_normal(clean.shape)).astype(np.float32)
        loop = np.isin(labels, LOOP_DIGITS).astype(np.int64)
        parts, start = [], 0
        for size in sizes:
            idx = order[start : start + size]
            start += size
            y = {
                "digit": torch.from_numpy(labels[idx]),
                "parity": torch.from_numpy(labels[idx] % 2),
                "has_loop": torch.from_numpy(loop[idx]),
                "denoise": torch.from_numpy(clean[idx]),
            }
            parts.append(Split(torch.from_numpy(noisy[idx].reshape(-1, 8, 8)), y))
        return Splits(parts[0], parts[1], parts[2])


@register_problem(
    "digits-mtl",
    description="noisy 8×8 digits: digit, parity, has-loop (CE) + denoise (MSE); seconds, for CI",
    source="scikit-learn load_digits (bundled)",
)
def digits_mtl() -> DigitsProblem:
    """The default ``digits-mtl`` problem."""
    return DigitsProblem()
