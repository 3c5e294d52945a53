"""``mnist1d-mtl`` and ``mnist1d-noisy``: MNIST-1D signals with their latent factors as tasks."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt

from lossrag.bench.data.mnist1d import MNIST1DSample, MNIST1DSpec, generate_mnist1d
from lossrag.bench.problems.base import Budget, Problem, Split, Splits, register_problem
from lossrag.tasks import Task

__all__ = ["LATENTS", "MNIST1DProblem"]

#: The latent factors learnt as scalar regression tasks.
LATENTS: tuple[str, ...] = ("shift", "width", "amplitude", "shear")
_JUNK = ("class_noisy", "shift_noisy", "noise")


class MNIST1DProblem(Problem):
    """MNIST-1D -> class (CE, accuracy), shift/width/amplitude/shear (MSE on z-scores, MAE in raw
    units) and denoise (the 40-point clean signal, MSE).

    With ``junk=True`` three junk tasks are trained but not scored: the class with
    ``label_flip`` of the labels replaced by another class, the shift z-score plus
    ``N(0, shift_noise²)``, and a ``noise_dim``-dimensional pure-noise target of std
    ``noise_scale``. The junk targets are noisy in every split.

    Attributes:
        n_train, n_val, n_test: Split sizes (all generated).
        spec: Parameters of the generator.
        junk: Add the three junk tasks.
        label_flip, shift_noise, noise_dim, noise_scale: Strength of the junk tasks.
    """

    can_stream = True
    unscored = _JUNK

    family: Literal["mnist1d"] = "mnist1d"
    budget: Budget = Budget(epochs=20, batch_size=256)
    hidden: tuple[PositiveInt, ...] = (256, 256)
    n_train: PositiveInt = 20000
    n_val: PositiveInt = 4000
    n_test: PositiveInt = 4000
    spec: MNIST1DSpec = MNIST1DSpec()
    junk: bool = False
    label_flip: float = Field(default=0.5, ge=0.0, le=1.0)
    shift_noise: float = Field(default=3.0, ge=0.0)
    noise_dim: PositiveInt = 10
    noise_scale: PositiveFloat = 5.0

    @property
    def in_dim(self) -> int:
        """The signal length."""
        return self.spec.final_seq_length

    def _make_tasks(self) -> list[Task]:
        tasks = [Task("class", kind="classification", num_classes=10)]
        tasks += [Task(name, kind="regression", metric="mae") for name in LATENTS]
        tasks.append(Task("denoise", kind="regression", metric="mse"))
        if self.junk:
            tasks += [
                Task("class_noisy", kind="classification", num_classes=10),
                Task("shift_noisy", kind="regression", metric="mae"),
                Task("noise", kind="regression", metric="mse"),
            ]
        return tasks

    def regression_dims(self) -> dict[str, int]:
        """Denoise outputs the signal; the pure-noise junk task ``noise_dim`` values."""
        dims = {"denoise": self.spec.final_seq_length}
        if self.junk:
            dims["noise"] = self.noise_dim
        return dims

    def _split(
        self, data: MNIST1DSample, stats: dict[str, tuple[float, float]], rng: np.random.Generator
    ) -> Split:
        y: dict[str, torch.Tensor] = {"class": torch.from_numpy(data.label)}
        for name in LATENTS:
            mean, std = stats[name]
            y[name] = torch.from_numpy(((getattr(data, name) - mean) / std).astype(np.float32))
        y["denoise"] = torch.from_numpy(data.clean)
        if self.junk:
            y.update(self._junk_targets(data, y["shift"].numpy(), rng))
        return Split(torch.from_numpy(data.x), y, {name: stats[name][1] for name in LATENTS})

    def _junk_targets(
        self, data: MNIST1DSample, shift_z: np.ndarray, rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        n = len(data.label)
        flip = rng.random(n) < self.label_flip
        other = (data.label + rng.integers(1, 10, n)) % 10
        noisy_shift = shift_z + self.shift_noise * rng.standard_normal(n)
        noise = self.noise_scale * rng.standard_normal((n, self.noise_dim))
        return {
            "class_noisy": torch.from_numpy(np.where(flip, other, data.label)),
            "shift_noisy": torch.from_numpy(noisy_shift.astype(np.float32)),
            "noise": torch.from_numpy(noise.astype(np.float32)),
        }

    def load(self, seed: int) -> Splits:
        """Generate the three splits from ``seed``; latents z-scored with training statistics.

        ``Splits.sampler`` draws fresh signals (same statistics), for ``stream=True``.
        """
        rng = self.rng(seed)
        train = generate_mnist1d(self.n_train, rng, self.spec)
        val = generate_mnist1d(self.n_val, rng, self.spec)
        test = generate_mnist1d(self.n_test, rng, self.spec)
        stats = {}
        for name in LATENTS:
            values = getattr(train, name).astype(np.float64)
            stats[name] = (float(values.mean()), float(values.std()) or 1.0)

        def sampler(n: int, generator: torch.Generator) -> Split:
            fresh = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
            return self._split(generate_mnist1d(n, fresh, self.spec), stats, fresh)

        return Splits(
            self._split(train, stats, rng),
            self._split(val, stats, rng),
            self._split(test, stats, rng),
            sampler,
        )


@register_problem(
    "mnist1d-mtl",
    description="MNIST-1D: class (CE) + 4 latent regressions (MAE) + denoise (MSE); mixed losses",
)
def mnist1d_mtl() -> MNIST1DProblem:
    """The default ``mnist1d-mtl`` problem."""
    return MNIST1DProblem()


@register_problem(
    "mnist1d-noisy",
    description="mnist1d-mtl plus three unscored junk tasks (flipped labels, noisy shift, noise)",
)
def mnist1d_noisy() -> MNIST1DProblem:
    """``mnist1d-mtl`` with the three junk tasks."""
    return MNIST1DProblem(junk=True)
