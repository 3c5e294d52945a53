"""``mnist1d-mtl``, ``mnist1d-noisy``, ``mnist1d-outliers`` and ``mnist1d-imbalanced``: MNIST-1D
signals with their latent factors as tasks."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from lossrag.bench.data.corrupt import add_outliers, flip_labels, long_tail_mask
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

    Two corruptions of the training and validation splits (and of streamed samples) leave the
    test split clean, as real data is: with ``outliers > 0`` a share ``outliers`` of the z-scored
    targets of each task in ``outlier_tasks`` get a gross one-sided error ``+outlier_scale·|z|``
    (:func:`~lossrag.bench.data.corrupt.add_outliers`); with ``imbalance > 1`` the signals are
    drawn with an exponentially long-tailed class distribution, class 0 ``imbalance`` times as
    frequent as class 9 (:func:`~lossrag.bench.data.corrupt.long_tail_mask`), while the test
    classes stay balanced. ``class_metric="f1"`` scores the class task by macro-F1.

    Attributes:
        n_train, n_val, n_test: Split sizes (all generated).
        spec: Parameters of the generator.
        junk: Add the three junk tasks.
        label_flip, shift_noise, noise_dim, noise_scale: Strength of the junk tasks.
        latents: The latent regressions trained (some of :data:`LATENTS`, in that order).
        denoise: Train the denoise task.
        outliers: Share of corrupted targets of each task in ``outlier_tasks``.
        outlier_tasks: The latents whose training and validation targets get outliers.
        outlier_scale: Size of the outliers, in standard deviations of the target.
        imbalance: Ratio of the most to the least frequent class in training and validation.
        class_metric: Metric of the class task (``accuracy`` or macro ``f1``).
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
    latents: tuple[str, ...] = LATENTS
    denoise: bool = True
    outliers: float = Field(default=0.0, ge=0.0, lt=1.0)
    outlier_tasks: tuple[str, ...] = ("shift", "width")
    outlier_scale: PositiveFloat = 10.0
    imbalance: float = Field(default=1.0, ge=1.0)
    class_metric: Literal["accuracy", "f1"] = "accuracy"

    @model_validator(mode="after")
    def _check_latents(self) -> MNIST1DProblem:
        for field, names, allowed in (
            ("latents", self.latents, LATENTS),
            ("outlier_tasks", self.outlier_tasks if self.outliers else (), self.latents),
        ):
            unknown = sorted(set(names) - set(allowed))
            if unknown:
                raise ValueError(
                    f"Problem {self.name!r}: {field} {unknown} are not trained latents; "
                    f"expected some of {', '.join(allowed)}."
                )
        return self

    @property
    def in_dim(self) -> int:
        """The signal length."""
        return self.spec.final_seq_length

    def _make_tasks(self) -> list[Task]:
        tasks = [Task("class", kind="classification", num_classes=10, metric=self.class_metric)]
        tasks += [Task(name, kind="regression", metric="mae") for name in self.latents]
        if self.denoise:
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
        dims = {"denoise": self.spec.final_seq_length} if self.denoise else {}
        if self.junk:
            dims["noise"] = self.noise_dim
        return dims

    def _split(
        self,
        data: MNIST1DSample,
        stats: dict[str, tuple[float, float]],
        rng: np.random.Generator,
        corrupt: bool,
    ) -> Split:
        y: dict[str, torch.Tensor] = {"class": torch.from_numpy(data.label)}
        z = {
            name: ((getattr(data, name) - mean) / std).astype(np.float32)
            for name, (mean, std) in stats.items()
        }
        y.update({name: torch.from_numpy(z[name]) for name in self.latents})
        if self.denoise:
            y["denoise"] = torch.from_numpy(data.clean)
        if self.junk:
            y.update(self._junk_targets(data, z["shift"], rng))
        if corrupt and self.outliers > 0:
            for name in self.outlier_tasks:
                noisy = add_outliers(y[name].numpy(), self.outliers, self.outlier_scale, rng)
                y[name] = torch.from_numpy(noisy)
        return Split(torch.from_numpy(data.x), y, {name: stats[name][1] for name in self.latents})

    def _junk_targets(
        self, data: MNIST1DSample, shift_z: np.ndarray, rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        n = len(data.label)
        flipped = flip_labels(data.label, self.label_flip, 10, rng)
        noisy_shift = shift_z + self.shift_noise * rng.standard_normal(n)
        noise = self.noise_scale * rng.standard_normal((n, self.noise_dim))
        return {
            "class_noisy": torch.from_numpy(flipped),
            "shift_noisy": torch.from_numpy(noisy_shift.astype(np.float32)),
            "noise": torch.from_numpy(noise.astype(np.float32)),
        }

    def _generate(self, n: int, rng: np.random.Generator, corrupt: bool) -> MNIST1DSample:
        """``n`` signals, long-tailed over the classes when ``corrupt`` and ``imbalance > 1``."""
        if not corrupt or self.imbalance == 1.0:
            return generate_mnist1d(n, rng, self.spec)
        parts: list[MNIST1DSample] = []
        while sum(len(p.label) for p in parts) < n:
            drawn = generate_mnist1d(n, rng, self.spec)
            parts.append(drawn.take(long_tail_mask(drawn.label, self.imbalance, 10, rng)))
        return MNIST1DSample.concat(parts).take(np.arange(n))

    def load(self, seed: int) -> Splits:
        """Generate the three splits from ``seed``; latents z-scored with training statistics;
        the corruptions (if any) in the training and validation splits only.

        ``Splits.sampler`` draws fresh signals (same statistics, corrupted), for ``stream=True``.
        """
        rng = self.rng(seed)
        train = self._generate(self.n_train, rng, True)
        val = self._generate(self.n_val, rng, True)
        test = self._generate(self.n_test, rng, False)
        stats = {}
        for name in LATENTS:
            values = getattr(train, name).astype(np.float64)
            stats[name] = (float(values.mean()), float(values.std()) or 1.0)

        def sampler(n: int, generator: torch.Generator) -> Split:
            fresh = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
            return self._split(self._generate(n, fresh, True), stats, fresh, True)

        return Splits(
            self._split(train, stats, rng, True),
            self._split(val, stats, rng, True),
            self._split(test, stats, rng, False),
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


@register_problem(
    "mnist1d-outliers",
    description="MNIST-1D class (CE) + shift, width, amplitude (MAE); 15 % gross one-sided "
    "outliers in the training and validation targets of shift and width; clean test",
)
def mnist1d_outliers() -> MNIST1DProblem:
    """MNIST-1D on 8,000 training signals: class, shift, width (outliers), amplitude (clean)."""
    return _small(latents=("shift", "width", "amplitude"), outliers=0.15)


@register_problem(
    "mnist1d-imbalanced",
    description="MNIST-1D class (CE -> macro-F1) + shift, amplitude (MAE); classes long-tailed "
    "50:1 in training and validation, balanced test",
)
def mnist1d_imbalanced() -> MNIST1DProblem:
    """MNIST-1D on 8,000 long-tailed training signals: class (macro-F1), shift, amplitude."""
    return _small(latents=("shift", "amplitude"), imbalance=50.0, class_metric="f1")


def _small(**fields: Any) -> MNIST1DProblem:
    """The loss-choice problems' size: 8,000 / 2,000 / 4,000 signals, 15 epochs, no denoise."""
    size = {"n_train": 8000, "n_val": 2000, "n_test": 4000, "denoise": False}
    return MNIST1DProblem.model_validate(
        {**size, "budget": {"epochs": 15, "batch_size": 256}, **fields}
    )
