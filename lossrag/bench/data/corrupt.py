"""Corruptions of training data where the choice of loss matters: label noise, gross outliers in
regression targets, class imbalance. All randomness comes from the generator passed in.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> labels = np.arange(10).repeat(1000)
>>> noisy = flip_labels(labels, 0.4, 10, rng)
>>> round(float((noisy != labels).mean()), 2)
0.4
>>> keep = long_tail_mask(labels, 10.0, 10, rng)
>>> bool(keep[labels == 0].all()), round(float(keep[labels == 9].mean()), 1)
(True, 0.1)
"""

from __future__ import annotations

import numpy as np

__all__ = ["add_outliers", "flip_labels", "long_tail_mask"]


def flip_labels(
    labels: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Symmetric label noise: each label is, with probability ``rate``, replaced by one of the
    other ``num_classes − 1`` classes drawn uniformly."""
    n = len(labels)
    flip = rng.random(n) < rate
    other = (labels + rng.integers(1, num_classes, n)) % num_classes
    return np.where(flip, other, labels)


def add_outliers(
    values: np.ndarray, rate: float, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """Gross one-sided errors: each value is, with probability ``rate``, increased by
    ``scale·|z|``, ``z ~ N(0, 1)`` (a glitch or unit error that always adds). On z-scored targets
    ``scale`` is in standard deviations of the target."""
    hit = rng.random(values.shape) < rate
    error = scale * np.abs(rng.standard_normal(values.shape))
    return np.where(hit, values + error, values).astype(values.dtype)


def long_tail_mask(
    labels: np.ndarray, ratio: float, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Which samples to keep for an exponentially long-tailed class distribution: class ``c`` is
    kept with probability ``ratio^(−c / (num_classes − 1))``, so class 0 is ``ratio`` times as
    frequent as the last class."""
    keep = ratio ** (-np.arange(num_classes) / (num_classes - 1))
    return rng.random(len(labels)) < keep[labels]
