"""The CAGrad toy: closed-form values and gradients against torch autograd, the Pareto set, runs."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from lossrag.bench.problems import START_POINTS, Toy2D
from lossrag.bench.problems.toy2d import ToyRule, pareto_set, toy_gradients, toy_losses
from lossrag.bench.runner import QUICK_METHODS
from lossrag.bench.toyrun import TOY_OPTIONS, TOY_UNSUPPORTED, _MethodRule, run_toy
from lossrag.weighting import make_method

LOWER = 5e-6


def reference(x: torch.Tensor) -> torch.Tensor:
    """The toy as published (CAGrad's toy code), first loss ×0.1 (Nash-MTL, FAMO)."""
    x1, x2 = x[0], x[1]
    f1 = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), LOWER).log() + 6
    f2 = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), LOWER).log() + 6
    c1 = torch.clamp(torch.tanh(x2 * 0.5), 0)
    f1_sq = ((-x1 + 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    f2_sq = ((-x1 - 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    c2 = torch.clamp(torch.tanh(-x2 * 0.5), 0)
    return torch.stack([0.1 * (f1 * c1 + f1_sq * c2), f2 * c1 + f2_sq * c2])


def jacobian(point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = torch.tensor(point, dtype=torch.float64, requires_grad=True)
    f = reference(x)
    rows = [torch.autograd.grad(f[i], x, retain_graph=True)[0] for i in range(2)]
    return f.detach().numpy(), torch.stack(rows).numpy()


def ew(losses: np.ndarray, grads: np.ndarray) -> np.ndarray:
    return np.ones_like(losses)


def mgda(losses: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Min-norm point of the two gradients (closed form for two tasks)."""
    g1, g2 = grads[:, 0], grads[:, 1]
    diff = g1 - g2
    a = np.clip(((g2 - g1) * g2).sum(1) / np.maximum((diff * diff).sum(1), 1e-20), 0, 1)
    return np.stack([a, 1 - a], axis=1)


def test_values_and_gradients_match_autograd() -> None:
    rng = np.random.default_rng(0)
    special = [[0, 0], [3, 0], [-7, 1e-9], [-7.0, 0.0], *START_POINTS]  # tanh/clamp boundaries
    points = np.concatenate([rng.uniform(-10, 10, (300, 2)), special])
    for point in points:
        values, grads = jacobian(point)
        np.testing.assert_allclose(toy_losses(point), values, rtol=0, atol=1e-12)
        np.testing.assert_allclose(toy_gradients(point), grads, rtol=0, atol=1e-12)
    batch = toy_gradients(points)
    assert batch.shape == (len(points), 2, 2)
    np.testing.assert_allclose(batch[-1], toy_gradients(points[-1]))


def test_bad_points_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        toy_losses(np.zeros(3))


def test_pareto_set_is_stationary_and_not_dominated() -> None:
    curve = pareto_set(201)
    grads = toy_gradients(curve)
    lam = (curve[:, 0] + 7) / 14  # weight of f1 in the unscaled problem
    unscaled = grads / np.array([0.1, 1.0])[:, None]
    combo = lam[:, None] * unscaled[:, 0] + (1 - lam)[:, None] * unscaled[:, 1]
    assert np.abs(combo).max() < 1e-6
    # Brute force on a grid: its non-dominated values lie on the curve's front (in objective
    # space: along x2 the objectives are so flat that the grid front is a band in x), and no grid
    # point dominates a point of the curve.
    axis = np.linspace(-10, 10, 801)
    grid = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    values = toy_losses(grid)
    order = np.argsort(values[:, 0])
    best_f2 = np.minimum.accumulate(values[order, 1])
    keep = np.concatenate([[True], values[order[1:], 1] < best_f2[:-1]])
    front_values = values[order[keep]]
    assert len(front_values) > 300
    curve_front = toy_losses(pareto_set(4001))
    gap = np.linalg.norm(front_values[:, None] - curve_front[None], axis=-1).min(axis=1)
    assert gap.max() < 0.01
    assert np.all(Toy2D().pareto_distance(grid[order[keep]]) < 0.5)
    curve_values = toy_losses(curve)
    dominated = (values[None, :, 0] < curve_values[:, None, 0] - 1e-9) & (
        values[None, :, 1] < curve_values[:, None, 1] - 1e-9
    )
    assert not dominated.any()


def test_adam_matches_torch() -> None:
    toy = Toy2D(steps=300, record_every=1)
    run = toy.run(ew)
    for s, start in enumerate(START_POINTS):
        x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([x], lr=1e-3)
        for _ in range(300):
            opt.zero_grad()
            reference(x).sum().backward()
            opt.step()
        np.testing.assert_allclose(run.final[s], x.detach().numpy(), atol=1e-10)
    assert run.trajectory.shape == (5, 301, 2) and run.weights.shape == (5, 301, 2)
    np.testing.assert_allclose(run.trajectory[:, 0], np.array(START_POINTS))


@pytest.mark.slow  # 50k Adam steps from five starts; the same claims: test_bench_sanity
def test_equal_weighting_gets_stuck_from_nine_nine() -> None:
    """The known failure of linear scalarisation (Nash-MTL Fig. 1): (9, 9) stalls far away."""
    run = Toy2D(record_every=1000).run(ew)
    stuck = START_POINTS.index((9.0, 9.0))
    assert run.pareto_distance[stuck] > 5
    np.testing.assert_allclose(run.final[stuck], [5.0, 3.9], atol=0.1)
    others = [i for i in range(5) if i != stuck]
    assert np.all(run.pareto_distance[others] < 0.05)
    np.testing.assert_allclose(run.final[others], [[-5.73, -8.41]] * 4, atol=0.02)


@pytest.mark.slow  # 50k Adam steps from five starts; the same claims: test_bench_sanity
def test_mgda_reaches_the_pareto_set_from_every_start() -> None:
    run = Toy2D(record_every=1000).run(mgda)
    assert np.all(run.pareto_distance < 0.05)
    assert np.ptp(run.final[:, 0]) > 5  # different Pareto points, not one


def test_non_finite_weights_skip_the_step() -> None:
    def broken(losses: np.ndarray, grads: np.ndarray) -> np.ndarray:
        w = np.ones_like(losses)
        w[0] = np.nan
        return w

    run = Toy2D(steps=50).run(broken)
    assert run.skipped.tolist() == [50, 0, 0, 0, 0]
    np.testing.assert_array_equal(run.final[0], START_POINTS[0])
    with pytest.raises(ValueError, match="shape"):
        Toy2D(steps=5).run(lambda losses, grads: np.ones(2))


def test_config_is_typed() -> None:
    with pytest.raises(ValidationError):
        Toy2D(stepz=10)  # type: ignore[call-arg]
    assert Toy2D(optimizer="sgd", steps=10, lr=0.1).run(ew).final.shape == (5, 2)


# FAMO and UW on the toy: the wrappers against their published update rules, and why FAMO
# stalled from two start points (benchmarks/toy2d_famo.py has the measurements).


class _Adam:
    """torch-style Adam (β = 0.9, 0.999, ε = 1e-8); weight decay, if any, already in ``g``."""

    def __init__(self, shape: tuple[int, int], lr: float) -> None:
        self.lr, self.t, self.m, self.v = lr, 0, np.zeros(shape), np.zeros(shape)

    def step(self, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.999 * self.v + 0.001 * g * g
        m_hat = self.m / (1 - 0.9**self.t)
        return p - self.lr * m_hat / (np.sqrt(self.v / (1 - 0.999**self.t)) + 1e-8)


class FamoReference:
    """FAMO's Algorithm 1 (Liu et al., NeurIPS 2023), written from the paper, one row per start.

    Weights ``c·z_i/(L_i − b_i)`` with ``z = softmax(ξ)`` and ``c = (Σ z_i/(L_i − b_i))⁻¹``;
    on the next call, one Adam step on ``ξ`` along ``J_softmax(ξ)ᵀ δ`` plus ``γξ``, with
    ``δ_i = log(L_i^before − b_i) − log(L_i^after − b_i)``. ``gamma`` may differ per row.
    """

    def __init__(self, rows: int, bounds: tuple[float, float], gamma: float | np.ndarray) -> None:
        self.b, self.gamma = np.asarray(bounds), np.reshape(gamma, (-1, 1))
        self.xi, self.adam = np.zeros((rows, 2)), _Adam((rows, 2), lr=0.025)
        self.before: np.ndarray | None = None

    def __call__(self, losses: np.ndarray, grads: np.ndarray) -> np.ndarray:
        if self.before is not None:
            delta = np.log(self.before - self.b + 1e-8) - np.log(losses - self.b + 1e-8)
            z = self._z()
            g = z * (delta - (z * delta).sum(1, keepdims=True)) + self.gamma * self.xi
            self.xi = self.adam.step(self.xi, g)
        self.before = losses
        w = self._z() / (losses - self.b + 1e-8)
        return w / w.sum(1, keepdims=True)

    def _z(self) -> np.ndarray:
        e = np.exp(self.xi - self.xi.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


class UwReference:
    """Uncertainty weighting (Kendall et al., CVPR 2018): ``Σ ½e^{−s_i}L_i + ½s_i``, weights
    ``½e^{−s_i}``, ``s`` stepped by Adam (lr 1e-3) on ``½ − ½e^{−s_i}L_i``."""

    def __init__(self, rows: int) -> None:
        self.s, self.adam = np.zeros((rows, 2)), _Adam((rows, 2), lr=1e-3)

    def __call__(self, losses: np.ndarray, grads: np.ndarray) -> np.ndarray:
        w = 0.5 * np.exp(-self.s)
        self.s = self.adam.step(self.s, 0.5 - w * losses)
        return w


@pytest.fixture
def float64_default() -> Iterator[None]:
    """torchjd creates FAMO's logits and UW's log-variances in the default dtype: float64 here,
    so that the comparison with the float64 references is exact (FAMO's logit dynamics on the
    toy amplify rounding differences, float32 or not, within a few thousand steps)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_toy_runs_famo_with_its_authors_settings() -> None:
    """FAMO's toy code (Cranial-XIX/FAMO experiments/toy): b = (−21·0.1, −21), γ = 0."""
    famo = _MethodRule("famo", 1, seed=0).methods[0]
    assert famo.scalarizer.weight_decay == 0.0  # type: ignore[attr-defined]
    bounds = famo.scalarizer.min_losses  # type: ignore[attr-defined]
    np.testing.assert_allclose(bounds.numpy(), np.array([-2.1, -21.0]))
    assert TOY_OPTIONS["famo"] == {"min_losses": (-2.1, -21.0), "weight_decay": 0.0}
    assert make_method("famo").weight_decay == 1e-3  # type: ignore[attr-defined]  # elsewhere


@pytest.mark.parametrize(
    ("name", "options", "reference"),
    [
        ("famo", None, lambda: FamoReference(5, (-2.1, -21.0), 0.0)),
        (
            "famo",
            {"min_losses": (-2.0, -20.0), "weight_decay": 1e-3},
            lambda: FamoReference(5, (-2.0, -20.0), 1e-3),
        ),
        ("uw", None, lambda: UwReference(5)),
    ],
)
def test_toy_methods_follow_their_published_update_rules(
    float64_default: None,
    name: str,
    options: dict[str, Any] | None,
    reference: Callable[[], ToyRule],
) -> None:
    """Fed the same losses, the wrapped method and the reference give the same weights."""
    wrapped, ref, gap = _MethodRule(name, 5, seed=0, options=options), reference(), []

    def both(losses: np.ndarray, grads: np.ndarray) -> np.ndarray:
        w_ref = ref(losses, grads)
        w = wrapped(losses, grads)
        gap.append(np.abs(w / w.sum(1, keepdims=True) - w_ref / w_ref.sum(1, keepdims=True)))
        gap.append(np.abs(w.sum(1) - w_ref.sum(1)) / w_ref.sum(1))
        return w_ref

    Toy2D(steps=300, record_every=300).run(both)
    assert max(g.max() for g in gap) < 1e-10


@pytest.mark.slow  # 50k steps of the reference from ten rows, about 10 s
def test_famo_logit_decay_makes_it_stall_from_two_starts() -> None:
    """The cause of the stall: with γ = 1e-3 the decay outweighs the logits' gradient (the
    toy's per-step log-loss changes are ~1e-5), the logits stay near 0 and FAMO follows fixed
    1/(L − b) weights into the log-valleys from (−8.5, 7.5) and (9, 9). γ = 0 (the authors'
    toy setting) reaches the Pareto set from all five starts; the bounds do not matter."""
    toy = Toy2D(starts=START_POINTS * 2, record_every=50000)
    rule = FamoReference(10, (-2.1, -21.0), np.repeat([0.0, 1e-3], 5))
    d = toy.run(rule).pareto_distance
    assert np.all(d[:5] < 0.05)
    assert np.all(d[[5, 7]] > 5) and np.all(d[[6, 8, 9]] < 0.05)
    assert np.abs(rule.xi[5:]).max() < 0.1 < np.abs(rule.xi[:5]).max()


@pytest.mark.slow  # 50k steps of the wrapped FAMO from five starts, about 5 minutes
def test_famo_reaches_the_pareto_set_from_every_start() -> None:
    run = run_toy("famo", 0)
    assert np.all(run.pareto_distance < 0.05)
    assert np.ptp(run.final[:, 0]) > 1  # different Pareto points, not one


@pytest.mark.parametrize("name", QUICK_METHODS)
def test_every_method_runs_on_the_toy_or_says_why_not(name: str) -> None:
    """The one-commit run found DB-MTL, PBI and the retrieval policies crashing on the toy."""
    if name in TOY_UNSUPPORTED:
        why = re.escape(f"'{name}' is not run: {TOY_UNSUPPORTED[name]}")
        with pytest.raises(ValueError, match=why):
            run_toy(name, 0, steps=20, starts=[0])
        return
    run = run_toy(name, 0, steps=20, starts=[0, 2])
    assert np.isfinite(run.pareto_distance).all() and np.isfinite(run.final).all()


def test_methods_that_take_log_losses_get_bounds_below_the_toys_objectives() -> None:
    """GLS ran on the toy until its losses went negative; GO4Align ran on them silently."""
    infima = np.array([-1.9989, -19.989])
    for name in QUICK_METHODS:
        if name in TOY_UNSUPPORTED:
            continue
        method = make_method(name, **TOY_OPTIONS.get(name, {}))
        if method.positive_losses:
            bounds = getattr(method, "min_losses", None)
            assert bounds is not None and (np.array(bounds) < infima).all(), name
