"""``manyclass-fast``: a hard many-class task beside regressions that converge fast."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt

from lossrag.bench.data.synthetic import ManyClassInstance, make_manyclass_instance
from lossrag.bench.problems.base import Budget, Problem, Split, Splits, register_problem
from lossrag.tasks import Task

__all__ = ["ManyClassProblem"]


class ManyClassProblem(Problem):
    """A ``num_classes``-way Gaussian-mixture class task (CE -> accuracy) beside
    ``n_regressions`` smooth, near-deterministic regressions of the input (MSE -> MAE).

    The classes are mixture components in a ``latent_dim``-dimensional space (means of std
    ``separation``, unit within-class std) seen through a fixed random ``tanh`` layer: they
    overlap, so the class loss falls slowly and plateaus far above 0, while the regressions
    (unit variance, noise ``target_noise``) are learnt in a few epochs. It tests whether a
    method keeps training the slow task once the fast ones have converged, and whether it
    over-weights the regressions' tiny late losses.

    Attributes:
        n_train, n_val, n_test: Split sizes.
        num_classes, latent_dim, in_features, separation, n_regressions, input_noise,
            target_noise: See :class:`~lossrag.bench.data.synthetic.ManyClassInstance`.
    """

    can_stream = True

    family: Literal["manyclass"] = "manyclass"
    budget: Budget = Budget(epochs=20, batch_size=256)
    hidden: tuple[PositiveInt, ...] = (256, 256)
    n_train: PositiveInt = 20000
    n_val: PositiveInt = 4000
    n_test: PositiveInt = 4000
    num_classes: int = Field(default=64, ge=2)
    latent_dim: PositiveInt = 12
    in_features: PositiveInt = 32
    separation: PositiveFloat = 0.8
    n_regressions: int = Field(default=3, ge=1, le=10)
    input_noise: float = Field(default=0.05, ge=0.0)
    target_noise: float = Field(default=0.01, ge=0.0)

    @property
    def in_dim(self) -> int:
        """``in_features`` (32)."""
        return self.in_features

    def _make_tasks(self) -> list[Task]:
        tasks = [Task("class", kind="classification", num_classes=self.num_classes)]
        tasks += [Task(f"r{i}", kind="regression", metric="mae") for i in range(self.n_regressions)]
        return tasks

    def instance(self, seed: int) -> ManyClassInstance:
        """The mixture, lift and regression teacher of ``seed``'s instance."""
        return make_manyclass_instance(
            self.rng(seed),
            num_classes=self.num_classes,
            latent_dim=self.latent_dim,
            in_dim=self.in_features,
            separation=self.separation,
            n_regressions=self.n_regressions,
            input_noise=self.input_noise,
            target_noise=self.target_noise,
        )

    @staticmethod
    def _split(instance: ManyClassInstance, n: int, rng: np.random.Generator) -> Split:
        x, y = instance.sample(n, rng)
        return Split(torch.from_numpy(x), {k: torch.from_numpy(v) for k, v in y.items()})

    def load(self, seed: int) -> Splits:
        """Draw the instance, then the three splits; ``sampler`` streams more training data."""
        instance = self.instance(seed)
        data = np.random.default_rng([seed, 1, *self.family.encode()])

        def sampler(n: int, generator: torch.Generator) -> Split:
            fresh = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
            return self._split(instance, n, fresh)

        return Splits(
            self._split(instance, self.n_train, data),
            self._split(instance, self.n_val, data),
            self._split(instance, self.n_test, data),
            sampler,
        )


@register_problem(
    "manyclass-fast",
    description="64-class overlapping mixture (CE, plateaus) + 3 fast near-deterministic "
    "regressions (MAE)",
)
def manyclass_fast() -> ManyClassProblem:
    """The default ``manyclass-fast`` problem."""
    return ManyClassProblem()
