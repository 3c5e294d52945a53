"""The synthetic many-task regression of GradNorm (Chen et al., ICML 2018, §4).

Task ``i`` maps ``x ∈ R^250`` (uniform in ``[-1, 1]``, scaled to unit norm) to
``f_i(x) = σ_i · tanh((B + ε_i) x) ∈ R^100``, with ``B ~ N(0, 10²)`` shared by all tasks and
``ε_i ~ N(0, 3.5²)`` per task. The ``σ_i`` set the loss scales (their squares span 10⁴ when σ spans
1…100); optional per-task additive noise makes some tasks noisier than others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GradNormInstance", "geometric_sigmas", "make_gradnorm_instance"]


def geometric_sigmas(tasks: int, low: float = 1.0, high: float = 100.0) -> np.ndarray:
    """``tasks`` scales spaced geometrically from ``low`` to ``high`` (``(1, 100)`` for two)."""
    if tasks < 1:
        raise ValueError(f"geometric_sigmas: tasks must be >= 1, got {tasks}.")
    return np.geomspace(low, high, tasks) if tasks > 1 else np.array([low])


@dataclass(frozen=True)
class GradNormInstance:
    """One draw of the problem: the per-task matrices ``B + ε_i`` and the scales.

    Attributes:
        weights: ``B + ε_i`` per task, ``(tasks, out_dim, in_dim)`` float32.
        sigmas: ``σ``, ``(tasks,)``.
        noise: Std of additive target noise per task, in units of ``σ_i``, ``(tasks,)``.
    """

    weights: np.ndarray
    sigmas: np.ndarray
    noise: np.ndarray

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` samples: ``x`` ``(n, in_dim)`` float32 and ``y`` ``(tasks, n, out_dim)``."""
        x = rng.uniform(-1.0, 1.0, (n, self.weights.shape[2]))
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        pre = np.matmul(self.weights, x.T).transpose(0, 2, 1)
        y = self.sigmas[:, None, None].astype(np.float32) * np.tanh(pre)
        if self.noise.any():
            scale = (self.noise * self.sigmas).astype(np.float32)[:, None, None]
            y = y + scale * rng.standard_normal(y.shape, dtype=np.float32)
        return x, y.astype(np.float32)


def make_gradnorm_instance(
    rng: np.random.Generator,
    sigmas: np.ndarray,
    *,
    in_dim: int = 250,
    out_dim: int = 100,
    base_std: float = 10.0,
    offset_std: float = 3.5,
    noise: np.ndarray | None = None,
) -> GradNormInstance:
    """Draw ``B`` and the ``ε_i`` for tasks with scales ``sigmas``."""
    tasks = len(sigmas)
    base = rng.normal(0.0, base_std, (out_dim, in_dim))
    offsets = rng.normal(0.0, offset_std, (tasks, out_dim, in_dim))
    noise_array = np.zeros(tasks) if noise is None else np.asarray(noise, dtype=np.float64)
    if noise_array.shape != (tasks,):
        raise ValueError(f"GradNorm-synth: noise needs one value per task ({tasks}), got {noise}.")
    weights = (base[None] + offsets).astype(np.float32)
    return GradNormInstance(weights, np.asarray(sigmas, dtype=np.float64), noise_array)
