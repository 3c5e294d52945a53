"""``gradnorm-synth-t2``, ``-t10``, ``-t40``: GradNorm's synthetic tasks with scales 1…100."""

from __future__ import annotations

from functools import partial
from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, model_validator

from lossrag.bench.data.gradnorm import GradNormInstance, geometric_sigmas, make_gradnorm_instance
from lossrag.bench.problems.base import Budget, Problem, Split, Splits, register_problem
from lossrag.tasks import Task

__all__ = ["GradNormSynthProblem"]


class GradNormSynthProblem(Problem):
    """``T`` regressions ``f_i(x) = σ_i·tanh((B + ε_i) x)`` (100 outputs each), σ geometric 1…100.

    The loss is the MSE on raw targets (scales differ by up to 10⁴); the metric is the test MSE
    divided by ``σ_i²`` (0.94 is about what predicting 0 gives). Fresh samples are drawn every
    step by default (``stream=True``); ``n_train`` then only sets the steps per epoch.

    Attributes:
        n_tasks: Number of tasks T (named ``t0`` … ``t{T-1}``, σ increasing).
        sigma_range: Smallest and largest ``σ``.
        noise: Optional per-task additive target noise, in units of ``σ_i`` (training split and
            stream only; validation and test stay clean).
        n_train, n_val, n_test: Split sizes.
    """

    can_stream = True

    family: Literal["gradnorm-synth"] = "gradnorm-synth"
    budget: Budget = Budget(epochs=20, batch_size=100)
    hidden: tuple[PositiveInt, ...] = (100, 100, 100, 100)
    stream: bool = True
    n_tasks: PositiveInt = 2
    sigma_range: tuple[float, float] = (1.0, 100.0)
    noise: list[float] | None = None
    n_train: PositiveInt = 10000
    n_val: PositiveInt = 2000
    n_test: PositiveInt = 5000
    in_features: PositiveInt = Field(default=250)
    out_features: PositiveInt = Field(default=100)

    @model_validator(mode="after")
    def _check_noise(self) -> GradNormSynthProblem:
        if self.noise is not None and len(self.noise) != self.n_tasks:
            raise ValueError(
                f"Problem {self.name!r}: `noise` needs {self.n_tasks} values (one per task), "
                f"got {len(self.noise)}."
            )
        if not 0 < self.sigma_range[0] <= self.sigma_range[1]:
            raise ValueError(f"Problem {self.name!r}: sigma_range must be 0 < low <= high.")
        return self

    @property
    def in_dim(self) -> int:
        """The input dimension (250)."""
        return self.in_features

    @property
    def sigmas(self) -> np.ndarray:
        """The task scales ``σ_i``."""
        return geometric_sigmas(self.n_tasks, *self.sigma_range)

    def _make_tasks(self) -> list[Task]:
        return [Task(f"t{i}", kind="regression", metric="mse") for i in range(self.n_tasks)]

    def regression_dims(self) -> dict[str, int]:
        """Every head outputs ``out_features`` values."""
        return {f"t{i}": self.out_features for i in range(self.n_tasks)}

    def _split(self, instance: GradNormInstance, n: int, rng: np.random.Generator) -> Split:
        x, y = instance.sample(n, rng)
        scale = {f"t{i}": 1.0 / float(s) for i, s in enumerate(instance.sigmas)}
        return Split(
            torch.from_numpy(x), {f"t{i}": torch.from_numpy(y[i]) for i in range(len(y))}, scale
        )

    def load(self, seed: int) -> Splits:
        """Draw ``B`` and the ``ε_i`` from ``seed``, then the splits; ``sampler`` streams more."""
        rng = self.rng(seed)
        noise = np.asarray(self.noise or [0.0] * self.n_tasks, dtype=np.float64)
        noisy = make_gradnorm_instance(
            rng, self.sigmas, in_dim=self.in_features, out_dim=self.out_features, noise=noise
        )
        clean = GradNormInstance(noisy.weights, noisy.sigmas, np.zeros(self.n_tasks))

        def sampler(n: int, generator: torch.Generator) -> Split:
            fresh = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
            return self._split(noisy, n, fresh)

        return Splits(
            self._split(noisy, self.n_train, rng),
            self._split(clean, self.n_val, rng),
            self._split(clean, self.n_test, rng),
            sampler,
        )


def _factory(n_tasks: int) -> GradNormSynthProblem:
    return GradNormSynthProblem(n_tasks=n_tasks)


for _count in (2, 10, 40):
    register_problem(
        f"gradnorm-synth-t{_count}",
        description=f"GradNorm synthetic regression, T={_count}, σ geometric 1…100 (loss scale)",
    )(partial(_factory, _count))
