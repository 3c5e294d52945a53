"""Generators of the ``offset-scale`` and ``manyclass-fast`` problems.

Both draw inputs and targets from small random "teacher" networks, so every quantity is a
deterministic function of a numpy generator:

- **offset-scale** (:class:`OffsetScaleInstance`): ``x ~ N(0, I)``; a heavy-tailed regression
  ``offset + scale·g₀(x) + scale·noise·t_ν`` (Student-t noise, ν = 3) with a large offset; a
  tiny-scale regression ``tiny·g₁(x)``; a class task ``argmax`` of teacher logits; and a junk
  target of pure Gaussian noise, independent of ``x``.
- **manyclass-fast** (:class:`ManyClassInstance`): a Gaussian mixture of many classes in a
  low-dimensional latent space, seen through a fixed random ``tanh`` layer (the class task is
  hard: the mixture components overlap, so its loss plateaus well above 0), and a few
  regressions that are near-deterministic smooth functions of the input (they converge fast).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "ManyClassInstance",
    "OffsetScaleInstance",
    "Teacher",
    "make_manyclass_instance",
    "make_offset_scale_instance",
    "make_teacher",
]

#: Samples drawn to calibrate a teacher's outputs to mean 0 and std 1.
_CALIBRATION = 8192


@dataclass(frozen=True)
class Teacher:
    """A random one-hidden-layer ``tanh`` network, outputs calibrated to mean 0 and std 1 under
    ``N(0, I)`` inputs.

    Attributes:
        w1, b1: Hidden layer, ``(in_dim, hidden)`` and ``(hidden,)``.
        w2: Output layer, ``(hidden, out_dim)``.
        mean, std: Output statistics subtracted and divided out, ``(out_dim,)`` each.
    """

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    def raw(self, x: np.ndarray) -> np.ndarray:
        """The uncalibrated outputs ``tanh(x w1 + b1) w2``, ``(n, out_dim)``."""
        return np.tanh(x @ self.w1 + self.b1) @ self.w2

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The calibrated outputs ``(raw(x) − mean) / std``, ``(n, out_dim)`` float64."""
        return (self.raw(x) - self.mean) / self.std


def make_teacher(
    rng: np.random.Generator, in_dim: int, out_dim: int, hidden: int = 32, gain: float = 1.0
) -> Teacher:
    """Draw a teacher; ``gain`` scales the hidden pre-activations (larger: less smooth)."""
    if min(in_dim, out_dim, hidden) < 1:
        raise ValueError(
            f"make_teacher: in_dim, out_dim and hidden must be >= 1, got {in_dim}, {out_dim}, "
            f"{hidden}."
        )
    w1 = rng.normal(0.0, gain / np.sqrt(in_dim), (in_dim, hidden))
    b1 = rng.normal(0.0, 0.5, hidden)
    w2 = rng.normal(0.0, 1.0 / np.sqrt(hidden), (hidden, out_dim))
    probe = Teacher(w1, b1, w2, np.zeros(out_dim), np.ones(out_dim))
    raw = probe.raw(rng.standard_normal((_CALIBRATION, in_dim)))
    std = raw.std(axis=0)
    return Teacher(w1, b1, w2, raw.mean(axis=0), np.where(std > 1e-12, std, 1.0))


@dataclass(frozen=True)
class OffsetScaleInstance:
    """One draw of ``offset-scale``: its teachers and constants.

    Attributes:
        regress: Teacher of the two regressions (``g₀``, ``g₁``), 2 outputs.
        classes: Teacher of the class logits, one output per class.
        offset, scale: The heavy-tailed regression is ``offset + scale·g₀(x)`` plus noise.
        tail_df: Degrees of freedom ν of its Student-t noise.
        tail_noise: Std-free size of that noise, in units of ``scale`` (``scale·tail_noise·t_ν``).
        tiny: Scale of the tiny regression ``tiny·g₁(x)``.
        junk_scale: Std of the pure-noise junk target.
    """

    regress: Teacher
    classes: Teacher
    offset: float
    scale: float
    tail_df: float
    tail_noise: float
    tiny: float
    junk_scale: float

    def sample(
        self, n: int, rng: np.random.Generator, *, noisy: bool = True
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Draw ``n`` samples: ``x`` ``(n, in_dim)`` float32 and the targets ``heavy`` and
        ``tiny`` (float32, ``(n,)``), ``class`` (int64) and ``junk`` (float32).

        ``noisy=False`` leaves out the Student-t noise of ``heavy`` (a clean test split); the
        junk target is noise whatever ``noisy`` says.
        """
        x = rng.standard_normal((n, self.regress.w1.shape[0]))
        g = self.regress(x)
        heavy = self.offset + self.scale * g[:, 0]
        tail = rng.standard_t(self.tail_df, n)
        if noisy:
            heavy = heavy + self.scale * self.tail_noise * tail
        label = self.classes(x).argmax(axis=1)
        junk = self.junk_scale * rng.standard_normal(n)
        y = {
            "heavy": heavy.astype(np.float32),
            "tiny": (self.tiny * g[:, 1]).astype(np.float32),
            "class": label.astype(np.int64),
            "junk": junk.astype(np.float32),
        }
        return x.astype(np.float32), y


def make_offset_scale_instance(
    rng: np.random.Generator,
    *,
    in_dim: int = 20,
    num_classes: int = 5,
    offset: float = 1e3,
    scale: float = 1e2,
    tail_df: float = 3.0,
    tail_noise: float = 0.3,
    tiny: float = 1e-3,
    junk_scale: float = 1.0,
) -> OffsetScaleInstance:
    """Draw the teachers of one ``offset-scale`` instance."""
    if tail_df <= 2.0:
        raise ValueError(f"offset-scale: tail_df must be > 2 (finite variance), got {tail_df}.")
    regress = make_teacher(rng, in_dim, 2, hidden=32)
    classes = make_teacher(rng, in_dim, num_classes, hidden=32)
    return OffsetScaleInstance(
        regress, classes, offset, scale, tail_df, tail_noise, tiny, junk_scale
    )


@dataclass(frozen=True)
class ManyClassInstance:
    """One draw of ``manyclass-fast``.

    Attributes:
        means: Class means in the latent space, ``(classes, latent_dim)``.
        lift: Fixed random map of the latent to the input, ``(latent_dim, in_dim)``; the input
            is ``tanh(z · lift)`` plus ``input_noise``.
        regress: Teacher of the regressions, one output per regression, on the input.
        input_noise: Std of the Gaussian noise added to the input.
        target_noise: Std of the Gaussian noise on the regression targets (near-deterministic).
    """

    means: np.ndarray
    lift: np.ndarray
    regress: Teacher
    input_noise: float
    target_noise: float

    @property
    def num_classes(self) -> int:
        """Number of mixture components (classes)."""
        return int(self.means.shape[0])

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Draw ``n`` samples: ``x`` ``(n, in_dim)`` float32, ``class`` (int64, uniform over the
        classes) and ``r0``, ``r1``, ... (float32, ``(n,)``)."""
        label = rng.integers(0, self.num_classes, n)
        z = self.means[label] + rng.standard_normal((n, self.means.shape[1]))
        x = np.tanh(z @ self.lift) + self.input_noise * rng.standard_normal((n, self.lift.shape[1]))
        r = self.regress(x) + self.target_noise * rng.standard_normal((n, self.regress.w2.shape[1]))
        y: dict[str, np.ndarray] = {"class": label.astype(np.int64)}
        y.update({f"r{i}": r[:, i].astype(np.float32) for i in range(r.shape[1])})
        return x.astype(np.float32), y


def make_manyclass_instance(
    rng: np.random.Generator,
    *,
    num_classes: int = 64,
    latent_dim: int = 12,
    in_dim: int = 32,
    separation: float = 0.8,
    n_regressions: int = 3,
    input_noise: float = 0.05,
    target_noise: float = 0.01,
) -> ManyClassInstance:
    """Draw the class means, the lift and the regression teacher of one instance.

    ``separation`` is the std of the class means in units of the within-class std (1): smaller
    overlaps the classes more and lowers the best reachable accuracy.
    """
    if num_classes < 2 or n_regressions < 1:
        raise ValueError(
            f"manyclass-fast: needs num_classes >= 2 and n_regressions >= 1, got {num_classes} "
            f"and {n_regressions}."
        )
    means = rng.normal(0.0, separation, (num_classes, latent_dim))
    lift = rng.normal(0.0, 1.0 / np.sqrt(latent_dim), (latent_dim, in_dim))
    # the teacher sees inputs in [-1, 1] (not N(0, I)): calibrate it on the input distribution
    teacher = make_teacher(rng, in_dim, n_regressions, hidden=8, gain=1.0)
    x = np.tanh(
        (
            means[rng.integers(0, num_classes, _CALIBRATION)]
            + rng.standard_normal((_CALIBRATION, latent_dim))
        )
        @ lift
    )
    raw = teacher.raw(x)
    std = raw.std(axis=0)
    teacher = Teacher(
        teacher.w1, teacher.b1, teacher.w2, raw.mean(axis=0), np.where(std > 1e-12, std, 1.0)
    )
    return ManyClassInstance(means, lift, teacher, input_noise, target_noise)
