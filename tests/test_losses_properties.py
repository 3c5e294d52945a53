"""Property tests over every loss: shapes, finiteness (values and gradients) on random and extreme
inputs, non-negativity where the card promises it, and invariances of each kind."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from lossrag.losses import LossSpec, registry

NAMES = registry.list()
SETTINGS = settings(max_examples=25, deadline=None)
DTYPES = (torch.float32, torch.float64)


@st.composite
def hyper_params(draw: st.DrawFn, spec: LossSpec) -> dict[str, float]:
    """A grid value or any value in a sane part of the admissible range, per hyper-parameter."""
    out: dict[str, float] = {}
    for key, hp in spec.params.items():
        low = hp.low if hp.include_low else hp.low + 1e-3 * max(1.0, abs(hp.low))
        high = min(hp.high if hp.include_high else hp.high - 1e-3, 100.0)
        free = st.floats(max(low, -100.0), high, allow_nan=False)
        out[key] = draw(st.sampled_from(hp.grid) | free)
    return spec.check_params(out)


@st.composite
def inputs(draw: st.DrawFn, kind: str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Seeded random inputs of a random size and scale; half of them at extreme magnitudes."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    b = draw(st.integers(1, 9))
    width = draw(st.integers(2, 6))
    extreme = draw(st.booleans())

    def normal(*shape: int, scale: float) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype) * scale

    if kind == "regression":
        shape = (b, width) if draw(st.booleans()) else (b,)
        scale = 10.0 ** draw(st.integers(-3, 3))
        output = normal(*shape, scale=scale)
        if extreme:  # residuals up to 1e6
            output = torch.where(normal(*shape, scale=1.0) > 0, 1e6, -1e6).to(dtype)
        return output, normal(*shape, scale=scale)
    if kind in ("classification", "multilabel"):
        logits = normal(b, width, scale=10.0 ** draw(st.integers(-2, 2)))
        if extreme:  # saturated logits
            logits = torch.sign(logits) * 1e4
        if kind == "classification":
            return logits, torch.randint(0, width, (b,), generator=gen)
        return logits, torch.randint(0, 2, (b, width), generator=gen).to(dtype)
    features = normal(b, width, 2, scale=10.0 ** draw(st.integers(-2, 2)))
    if extreme:  # huge, duplicated and all-zero feature vectors
        features = features * 1e4
        features[0] = 0.0
        if b > 2:
            features[2] = features[1]
    return features, torch.randint(0, draw(st.integers(1, 4)), (b,), generator=gen)


def _run(name: str, hp: dict[str, float], output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    output = output.clone().requires_grad_(True)
    value = registry.function(name)(output, target, **hp)
    (grad,) = torch.autograd.grad(value.sum(), output)
    return value.detach(), grad


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@SETTINGS
@given(data=st.data())
def test_shape_finite_and_sign(name: str, dtype: torch.dtype, data: st.DataObject) -> None:
    spec = registry.spec(name)
    hp = data.draw(hyper_params(spec))
    output, target = data.draw(inputs(spec.kinds[0], dtype))
    value, grad = _run(name, hp, output, target)
    assert value.dtype == dtype
    assert value.shape == (() if spec.per_batch else output.shape[:1])
    assert torch.isfinite(value).all(), f"{name}{hp}: {value}"
    assert torch.isfinite(grad).all(), f"{name}{hp}: gradient {grad}"
    if spec.non_negative:
        tolerance = 8 * torch.finfo(dtype).eps * (1 + value.abs())
        assert (value >= -tolerance).all(), f"{name}{hp}: {value}"


def test_some_losses_may_be_negative() -> None:
    """``non_negative = false`` is not a blanket: the likelihoods do go below zero."""
    for name in ("gaussian_nll", "student_t_nll"):
        assert not registry.spec(name).non_negative
        x = torch.zeros(3)
        assert (registry.create(name, sigma=0.1)(x, x) < 0).all()


@pytest.mark.parametrize("name", registry.list(kind="regression"))
@SETTINGS
@given(data=st.data())
def test_regression_minimum_at_target(name: str, data: st.DataObject) -> None:
    """A non-negative regression loss is 0 at ``output == target`` and positive elsewhere."""
    spec = registry.spec(name)
    if not spec.non_negative:
        return
    hp = data.draw(hyper_params(spec))
    target, _ = data.draw(inputs("regression", torch.float64))
    assert (registry.function(name)(target, target, **hp) == 0).all()
    moved = registry.function(name)(target + 0.5, target, **hp)
    assert (moved > 0).all()


@pytest.mark.parametrize("name", registry.list(kind="classification"))
@SETTINGS
@given(data=st.data(), shift=st.floats(-50, 50))
def test_classification_shift_invariance(name: str, data: st.DataObject, shift: float) -> None:
    """Classification losses depend on softmax probabilities only."""
    spec = registry.spec(name)
    hp = data.draw(hyper_params(spec))
    logits, target = data.draw(inputs("classification", torch.float64))
    fn = registry.function(name)
    base = fn(logits, target, **hp)
    assert torch.allclose(fn(logits + shift, target, **hp), base, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_batch_permutation(name: str, data: st.DataObject) -> None:
    """Permuting the batch permutes per-sample losses and leaves per-batch losses unchanged.

    InfoNCE picks the next same-class sample as positive, so it is only invariant when every
    class has at most two members: the labels here pair the samples up.
    """
    spec = registry.spec(name)
    hp = data.draw(hyper_params(spec))
    output, target = data.draw(inputs(spec.kinds[0], torch.float64))
    if spec.per_batch:
        target = torch.arange(len(target)) // 2
    perm = torch.as_tensor(data.draw(st.permutations(range(len(target)))))
    fn = registry.function(name)
    base, permuted = fn(output, target, **hp), fn(output[perm], target[perm], **hp)
    expected = base if spec.per_batch else base[perm]
    assert torch.allclose(permuted, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["supcon", "infonce", "triplet", "triplet_all"])
@SETTINGS
@given(data=st.data(), scale=st.floats(1e-3, 1e3))
def test_normalised_losses_ignore_feature_scale(
    name: str, data: st.DataObject, scale: float
) -> None:
    spec = registry.spec(name)
    assert spec.family in ("contrastive", "metric")
    hp = data.draw(hyper_params(spec))
    features, labels = data.draw(inputs("representation", torch.float64))
    fn = registry.function(name)
    assert torch.allclose(fn(features * scale, labels, **hp), fn(features, labels, **hp))


def test_anchor_without_positive_gets_zero() -> None:
    # Anchors 0 and 1 share a class but point in opposite directions; 2 and 3 are alone.
    features = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.1], [-1.0, 0.1]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2])
    for name in ("supcon", "triplet", "triplet_all"):
        value = registry.create(name)(features, labels)
        assert value[2:].eq(0).all() and value[:2].gt(0).all(), name
    assert float(registry.create("infonce")(features, torch.arange(4))) == 0.0


def test_varcov_single_sample_is_zero_with_gradient() -> None:
    features = torch.randn(1, 5, requires_grad=True)
    value = registry.create("varcov")(features, torch.zeros(1, dtype=torch.long))
    value.backward()
    assert value.shape == () and float(value.detach()) == 0.0
    assert features.grad is not None and torch.equal(features.grad, torch.zeros(1, 5))


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("l2", (torch.zeros(3), torch.zeros(4)), "same shape|one shape"),
        ("l2", (torch.zeros(3), torch.zeros(3, dtype=torch.long)), "float"),
        ("ce", (torch.zeros(3, 4), torch.zeros(3)), "integer"),
        ("ce", (torch.zeros(3, 1), torch.zeros(3, dtype=torch.long)), "C >= 2"),
        ("ce", (torch.zeros(3, 4), torch.zeros(2, dtype=torch.long)), r"\(3,\)"),
        ("bce", (torch.zeros(3, 4), torch.zeros(3, 5)), "same shape"),
        ("supcon", (torch.zeros(3, 4), torch.zeros(4, dtype=torch.long)), "labels"),
        (
            "varcov",
            (torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, dtype=torch.long)),
            "float",
        ),
    ],
)
def test_bad_inputs_name_the_loss(name: str, args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValueError, match=rf"Loss '{name}'.*({message})"):
        registry.function(name)(*args)


def test_huge_residual_gradients_are_bounded_for_robust_losses() -> None:
    """Bounded-influence losses give gradients that do not grow with a 1e6 residual."""
    output = torch.tensor([1e6, -1e6], requires_grad=True)
    target = torch.zeros(2)
    for name in ("huber", "smooth_l1", "logcosh", "pseudo_huber", "l1", "pinball"):
        (grad,) = torch.autograd.grad(registry.function(name)(output, target).sum(), output)
        assert grad.abs().max() <= 1.0 + 1e-6, name
    for name in ("cauchy", "welsch", "geman_mcclure", "tukey"):
        (grad,) = torch.autograd.grad(registry.function(name)(output, target).sum(), output)
        assert grad.abs().max() < 1e-5, name
    assert math.isfinite(float(registry.function("l2")(output.detach(), target).sum()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_keeps_dtype(dtype: torch.dtype) -> None:
    """Every loss runs in half precision, stays finite and returns the input's dtype."""
    gen = torch.Generator().manual_seed(0)
    for name in NAMES:
        kind = registry.spec(name).kinds[0]
        b, c = 8, 5
        target: Tensor
        if kind == "regression":
            target = torch.randn(b, c, generator=gen).to(dtype)
        elif kind == "multilabel":
            target = torch.randint(0, 2, (b, c), generator=gen)
        else:
            target = torch.randint(0, 3, (b,), generator=gen)
        output = torch.randn(b, c, generator=gen).to(dtype)
        value, grad = _run(name, registry.spec(name).defaults, output, target)
        assert value.dtype == dtype, name
        assert torch.isfinite(value).all() and torch.isfinite(grad).all(), name
