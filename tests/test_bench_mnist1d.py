"""The vectorised MNIST-1D generator: a loop reference, latent ranges, determinism, learnability."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from sklearn.linear_model import LogisticRegression

from lossrag.bench.data.mnist1d import TEMPLATES, MNIST1DSpec, generate_mnist1d, resample

QUIET = MNIST1DSpec(corr_noise_scale=0.0, iid_noise_scale=0.0)


def reference_clean(label: int, pad: int, amplitude: float, shift: int, shear: float) -> np.ndarray:
    """One clean signal, the slow obvious way: np.interp, np.roll, ramp (72 points)."""
    padded = np.concatenate([TEMPLATES[label], np.zeros(pad)])
    dilated = np.interp(np.linspace(0, len(padded) - 1, 72), np.arange(len(padded)), padded)
    return np.roll(dilated * amplitude, shift) + shear * np.linspace(-0.5, 0.5, 72)


def test_matches_a_per_sample_reference() -> None:
    spec = QUIET.model_copy(update={"final_seq_length": 72})  # resampling 72 -> 72 is identity
    data = generate_mnist1d(50, np.random.default_rng(0), spec)
    assert np.array_equal(data.x, data.clean)  # no noise at all
    for i in range(50):
        expected = reference_clean(
            int(data.label[i]), int(data.width[i]), float(data.amplitude[i]),
            int(data.shift[i]), float(data.shear[i]),
        )  # fmt: skip
        np.testing.assert_allclose(data.clean[i], expected, atol=1e-5)


def test_latent_ranges_and_balance() -> None:
    data = generate_mnist1d(5000, np.random.default_rng(1))
    assert data.x.shape == data.clean.shape == (5000, 40) and data.x.dtype == np.float32
    assert np.bincount(data.label).tolist() == [500] * 10
    assert data.shift.min() == 0 and data.shift.max() == 47
    assert data.width.min() == 36 and data.width.max() == 60
    assert data.amplitude.min() >= 0.8 and data.amplitude.max() <= 1.2
    assert data.shear.min() >= -0.375 and data.shear.max() <= 0.375
    noise = data.x - data.clean
    assert 0.01 < noise.std() < 0.2  # background noise present, not overwhelming


def test_deterministic_given_the_generator() -> None:
    a = generate_mnist1d(100, np.random.default_rng(5))
    b = generate_mnist1d(100, np.random.default_rng(5))
    c = generate_mnist1d(100, np.random.default_rng(6))
    assert np.array_equal(a.x, b.x) and np.array_equal(a.shift, b.shift)
    assert not np.array_equal(a.x, c.x)


def test_resample_endpoints_and_linearity() -> None:
    ramp = np.linspace(0, 1, 72)[None]
    np.testing.assert_allclose(resample(ramp, 40), np.linspace(0, 1, 40)[None], atol=1e-12)


def test_spec_validation() -> None:
    with pytest.raises(ValidationError, match="padding"):
        MNIST1DSpec(padding=(10, 5))
    with pytest.raises(ValidationError, match="max_translation"):
        MNIST1DSpec(max_translation=500)


def test_classes_are_learnable_by_logistic_regression() -> None:
    """Sanity check that can fail: linear features beat 10 % chance clearly (about 29 %)."""
    data = generate_mnist1d(4000, np.random.default_rng(0))
    clf = LogisticRegression(max_iter=1000).fit(data.x[:3000], data.label[:3000])
    accuracy = clf.score(data.x[3000:], data.label[3000:])
    assert accuracy > 0.2
    shuffled = LogisticRegression(max_iter=1000).fit(
        data.x[:3000], np.random.default_rng(1).permutation(data.label[:3000])
    )
    assert shuffled.score(data.x[3000:], data.label[3000:]) < 0.16  # no leak from the order
