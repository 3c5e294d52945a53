"""scikit-learn's bundled 8×8 handwritten digits (``load_digits``: 1,797 images, no download)."""

from __future__ import annotations

import numpy as np

__all__ = ["LOOP_DIGITS", "load_digits_arrays"]

#: Digits whose usual handwritten form has a closed loop (the ``has_loop`` task).
LOOP_DIGITS: tuple[int, ...] = (0, 6, 8, 9)


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)``: images ``(1797, 8, 8)`` float32 in ``[0, 1]``, labels int64."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0
    return images, np.asarray(bunch.target, dtype=np.int64)
