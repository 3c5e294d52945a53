"""Every loss against an independent reference (torch.nn.functional, numpy loops, scipy), plus
``gradcheck`` in float64 and a table of values worked out by hand."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import Tensor

from lossrag.losses import registry

Array = np.ndarray
Reference = Callable[..., Array]
NAMES = registry.list()


# ---------------------------------------------------------------- references (float64, numpy)


def _t(x: Array) -> Tensor:
    return torch.from_numpy(np.asarray(x))


def _rowmean(elementwise: Array) -> Array:
    return elementwise.reshape(len(elementwise), -1).mean(axis=1)


def _regression(f: Callable[..., Array]) -> Reference:
    def ref(output: Array, target: Array, **hp: float) -> Array:
        return _rowmean(f(output - target, **hp))

    return ref


def _torch_elementwise(fn: Callable[..., Tensor]) -> Reference:
    def ref(output: Array, target: Array, **hp: float) -> Array:
        return _rowmean(fn(_t(output), _t(target), reduction="none", **hp).numpy())

    return ref


def _softmax(z: Array) -> Array:
    e = np.exp(z - z.max())
    return e / e.sum()


def _per_row(f: Callable[..., float]) -> Reference:
    """A classification reference written for one sample, looped over the batch."""

    def ref(output: Array, target: Array, **hp: float) -> Array:
        return np.array([f(_softmax(z), int(y), **hp) for z, y in zip(output, target, strict=True)])

    return ref


def _per_label(f: Callable[..., float]) -> Reference:
    """A multilabel reference for one (probability, label) pair, looped and averaged per sample."""

    def ref(output: Array, target: Array, **hp: float) -> Array:
        p = 1.0 / (1.0 + np.exp(-output))
        return np.array(
            [
                np.mean([f(pc, yc, **hp) for pc, yc in zip(pr, yr, strict=True)])
                for pr, yr in zip(p, target, strict=True)
            ]
        )

    return ref


def _student_t(output: Array, target: Array, *, nu: float, sigma: float) -> Array:
    return _rowmean(-scipy.stats.t.logpdf(output - target, df=nu, scale=sigma))


def _gaussian(output: Array, target: Array, *, sigma: float) -> Array:
    var = torch.full(output.shape, sigma**2, dtype=torch.float64)
    out = F.gaussian_nll_loss(_t(output), _t(target), var, full=True, reduction="none")
    return _rowmean(out.numpy())


def _tukey(r: Array, *, c: float) -> Array:
    inside = c**2 / 6 * (1 - (1 - (r / c) ** 2) ** 3)
    return np.where(np.abs(r) <= c, inside, c**2 / 6)


def _ce_torch(output: Array, target: Array, **hp: float) -> Array:
    eps = hp.get("eps", 0.0)
    return F.cross_entropy(_t(output), _t(target), reduction="none", label_smoothing=eps).numpy()


def _bce_torch(output: Array, target: Array) -> Array:
    out = F.binary_cross_entropy_with_logits(_t(output), _t(target), reduction="none")
    return out.numpy().mean(axis=1)


def _asl(p: float, y: float, *, gamma_pos: float, gamma_neg: float, clip: float) -> float:
    if y == 1:
        return -((1 - p) ** gamma_pos) * math.log(p)
    shifted = max(p - clip, 0.0)
    return -(shifted**gamma_neg) * math.log(1 - shifted)


def _focal_bce(p: float, y: float, *, gamma: float, alpha: float) -> float:
    p_t, a_t = (p, alpha) if y == 1 else (1 - p, 1 - alpha)
    return -a_t * (1 - p_t) ** gamma * math.log(p_t)


def _soft_f1(output: Array, target: Array, *, smooth: float) -> Array:
    out = []
    for z, y in zip(output, target, strict=True):
        p = 1 / (1 + np.exp(-z))
        tp, fp, fn = np.sum(p * y), np.sum(p * (1 - y)), np.sum((1 - p) * y)
        out.append(1 - (2 * tp + smooth) / (2 * tp + fp + fn + smooth))
    return np.array(out)


def _unit(features: Array) -> Array:
    flat = features.reshape(len(features), -1)
    return flat / np.linalg.norm(flat, axis=1, keepdims=True)


def _supcon(output: Array, target: Array, *, temperature: float) -> Array:
    z, n = _unit(output), len(output)
    losses = np.zeros(n)
    for i in range(n):
        others = [a for a in range(n) if a != i]
        denom = sum(math.exp(z[i] @ z[a] / temperature) for a in others)
        positives = [p for p in others if target[p] == target[i]]
        for p in positives:
            losses[i] -= math.log(math.exp(z[i] @ z[p] / temperature) / denom) / len(positives)
    return losses


def _infonce(output: Array, target: Array, *, temperature: float) -> Array:
    z, n = _unit(output), len(output)
    terms = []
    for i in range(n):
        partner = next((j % n for j in range(i + 1, i + n) if target[j % n] == target[i]), None)
        if partner is None:
            continue
        candidates = [partner] + [k for k in range(n) if target[k] != target[i]]
        scores = np.array([z[i] @ z[k] / temperature for k in candidates])
        terms.append(-scores[0] + math.log(np.exp(scores).sum()))
    return np.array(np.mean(terms) if terms else 0.0)


def _triplet_parts(output: Array, target: Array) -> tuple[Array, list[list[int]], list[list[int]]]:
    z, n = _unit(output), len(output)
    d = np.array([[np.linalg.norm(z[i] - z[j]) for j in range(n)] for i in range(n)])
    pos = [[j for j in range(n) if j != i and target[j] == target[i]] for i in range(n)]
    neg = [[j for j in range(n) if target[j] != target[i]] for i in range(n)]
    return d, pos, neg


def _triplet(output: Array, target: Array, *, margin: float) -> Array:
    d, pos, neg = _triplet_parts(output, target)
    return np.array(
        [
            max(0.0, margin + max(d[i, pos[i]]) - min(d[i, neg[i]])) if pos[i] and neg[i] else 0.0
            for i in range(len(d))
        ]
    )


def _triplet_all(output: Array, target: Array, *, margin: float) -> Array:
    d, pos, neg = _triplet_parts(output, target)
    out = np.zeros(len(d))
    for i in range(len(d)):
        hinges = [max(0.0, margin + d[i, p] - d[i, q]) for p in pos[i] for q in neg[i]]
        out[i] = np.mean(hinges) if hinges else 0.0
    return out


def _varcov(output: Array, target: Array, *, gamma: float, cov_weight: float) -> Array:
    z = output.reshape(len(output), -1)
    cov = np.cov(z, rowvar=False)
    variance = np.mean(np.maximum(0.0, gamma - np.sqrt(np.diag(cov) + 1e-4)))
    off = cov - np.diag(np.diag(cov))
    return np.array(variance + cov_weight * np.sum(off**2) / z.shape[1])


REFERENCES: dict[str, Reference] = {
    # regression
    "l2": _torch_elementwise(F.mse_loss),
    "l1": _torch_elementwise(F.l1_loss),
    "huber": _torch_elementwise(F.huber_loss),
    "smooth_l1": _torch_elementwise(F.smooth_l1_loss),
    "logcosh": _regression(lambda r, scale: scale**2 * np.log(np.cosh(r / scale))),
    "cauchy": _regression(lambda r, scale: scale**2 / 2 * np.log(1 + (r / scale) ** 2)),
    "welsch": _regression(lambda r, scale: scale**2 / 2 * (1 - np.exp(-((r / scale) ** 2)))),
    "geman_mcclure": _regression(lambda r, scale: r**2 * scale**2 / (2 * (scale**2 + r**2))),
    "pseudo_huber": _regression(lambda r, delta: delta**2 * (np.sqrt(1 + (r / delta) ** 2) - 1)),
    "tukey": _regression(_tukey),
    "pinball": _regression(lambda r, tau: np.where(-r >= 0, tau * -r, (tau - 1) * -r)),
    "gaussian_nll": _gaussian,
    "student_t_nll": _student_t,
    # classification
    "ce": _ce_torch,
    "label_smoothing": _ce_torch,
    "focal": _per_row(lambda p, y, gamma: -((1 - p[y]) ** gamma) * math.log(p[y])),
    "poly1": _per_row(lambda p, y, epsilon: -math.log(p[y]) + epsilon * (1 - p[y])),
    "sce": _per_row(
        lambda p, y, alpha, beta: (
            -alpha * math.log(p[y])
            - beta * sum(p[k] * (0.0 if k == y else -4.0) for k in range(len(p)))
        )
    ),
    "mae_prob": _per_row(lambda p, y: float(np.abs(p - np.eye(len(p))[y]).sum())),
    "gce": _per_row(lambda p, y, q: (1 - p[y] ** q) / q),
    "brier": _per_row(lambda p, y: float(((p - np.eye(len(p))[y]) ** 2).sum())),
    # multilabel
    "bce": _bce_torch,
    "focal_bce": _per_label(_focal_bce),
    "asymmetric": _per_label(_asl),
    "soft_f1": _soft_f1,
    # representation
    "supcon": _supcon,
    "infonce": _infonce,
    "triplet": _triplet,
    "triplet_all": _triplet_all,
    "varcov": _varcov,
}


# ---------------------------------------------------------------- inputs (float64)


def make_inputs(kind: str, seed: int, vector: bool = True) -> tuple[Array, Array]:
    """Random inputs of moderate size for one task kind."""
    rng = np.random.default_rng(seed)
    if kind == "regression":
        shape = (6, 3) if vector else (6,)
        return rng.normal(0, 2, shape), rng.normal(0, 2, shape)
    if kind == "classification":
        return rng.normal(0, 3, (7, 4)), rng.integers(0, 4, 7)
    if kind == "multilabel":
        return rng.normal(0, 3, (6, 5)), rng.integers(0, 2, (6, 5)).astype(np.float64)
    labels = rng.permutation(np.array([0, 0, 1, 1, 1, 2, 3, 3]))  # class 2 has no positive
    return rng.normal(0, 1, (8, 2, 3)), labels


def settings(name: str) -> list[dict[str, float]]:
    """Defaults, every parameter at its smallest and at its largest grid value, and a mix."""
    spec = registry.spec(name)
    grids = {k: hp.grid for k, hp in spec.params.items()}
    mixed = {k: g[(i * 3 + 1) % len(g)] for i, (k, g) in enumerate(grids.items())}
    return [
        spec.defaults,
        {k: g[0] for k, g in grids.items()},
        {k: g[-1] for k, g in grids.items()},
        mixed,
    ]


def test_every_loss_has_a_reference() -> None:
    assert set(REFERENCES) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_matches_reference(name: str) -> None:
    spec, fn, ref = registry.spec(name), registry.function(name), REFERENCES[name]
    for seed, hp in enumerate(settings(name)):
        for vector in (True, False):
            output, target = make_inputs(spec.kinds[0], seed, vector)
            got = fn(_t(output), _t(target), **hp)
            assert got.dtype == torch.float64
            expected = np.asarray(ref(output, target, **hp))
            assert got.shape == expected.shape == (() if spec.per_batch else (len(output),))
            np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9, err_msg=str(hp))


def test_infonce_is_nt_xent_for_two_views() -> None:
    """With labels pairing sample i with sample i + n, InfoNCE is SimCLR's NT-Xent."""
    rng = np.random.default_rng(0)
    n, t = 5, 0.2
    features = rng.normal(size=(2 * n, 4))
    labels = np.concatenate([np.arange(n), np.arange(n)])
    z = _unit(features)
    sim = z @ z.T / t
    losses = []
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i]
        losses.append(-sim[i, j] + math.log(np.exp(sim[i, others]).sum()))
    got = registry.function("infonce")(_t(features), _t(labels), temperature=t)
    assert float(got) == pytest.approx(np.mean(losses), rel=1e-12)


# ---------------------------------------------------------------- gradcheck (away from kinks)


def _gap(values: Array) -> float:
    ordered = np.sort(values)
    return float(ordered[1] - ordered[0]) if len(ordered) > 1 else math.inf


def _triplet_kink_free(output: Array, target: Array, margin: float) -> bool:
    d, pos, neg = _triplet_parts(output, target)
    for i in range(len(d)):
        if pos[i] and neg[i]:
            hinge = margin + max(d[i, pos[i]]) - min(d[i, neg[i]])
            if min(_gap(-d[i, pos[i]]), _gap(d[i, neg[i]]), abs(hinge)) < 1e-3:
                return False
    return True


def _triplet_all_kink_free(output: Array, target: Array, margin: float) -> bool:
    d, pos, neg = _triplet_parts(output, target)
    hinges = [margin + d[i, p] - d[i, q] for i in range(len(d)) for p in pos[i] for q in neg[i]]
    return min(abs(h) for h in hinges) > 1e-3


def _asl_kink_free(output: Array, target: Array, clip: float, **_: float) -> bool:
    p = 1 / (1 + np.exp(-output))
    return bool(np.all(np.abs(p - clip)[target == 0] > 1e-3))


def _varcov_kink_free(output: Array, target: Array, gamma: float, **_: float) -> bool:
    std = np.sqrt(np.var(output.reshape(len(output), -1), axis=0, ddof=1) + 1e-4)
    return bool(np.all(np.abs(std - gamma) > 1e-3))


#: For each loss whose card says ``smooth = false``: inputs are kept only if they avoid its kinks.
KINK_FREE: dict[str, Callable[..., bool]] = {
    "l1": lambda output, target: bool(np.all(np.abs(output - target) > 1e-3)),
    "pinball": lambda output, target, tau: bool(np.all(np.abs(output - target) > 1e-3)),
    "asymmetric": _asl_kink_free,
    "triplet": _triplet_kink_free,
    "triplet_all": _triplet_all_kink_free,
    "varcov": _varcov_kink_free,
}


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name: str) -> None:
    spec, fn = registry.spec(name), registry.function(name)
    assert (name in KINK_FREE) == (not spec.smooth), "KINK_FREE lists exactly the non-smooth cards"
    for hp in settings(name)[:3]:
        seed = next(
            s
            for s in range(1000)
            if name not in KINK_FREE or KINK_FREE[name](*make_inputs(spec.kinds[0], s), **hp)
        )
        output, target = (_t(x) for x in make_inputs(spec.kinds[0], seed))
        output.requires_grad_(True)
        if spec.kinds == ["regression"]:
            target.requires_grad_(True)
            inputs: tuple[Tensor, ...] = (output, target)
            assert torch.autograd.gradcheck(lambda o, t, hp=hp: fn(o, t, **hp), inputs)
        else:
            assert torch.autograd.gradcheck(lambda o, t=target, hp=hp: fn(o, t, **hp), (output,))


# ---------------------------------------------------------------- values worked out by hand

ROOT2 = math.sqrt(2.0)
#: (loss, hyper-parameters, output, target, expected); integer targets are class labels.
PINNED: list[tuple[str, dict[str, float], list[Any], list[Any], Any]] = [
    ("l2", {}, [3.0, 0.0], [1.0, 0.5], [4.0, 0.25]),
    ("l1", {}, [3.0, 0.0], [1.0, 0.5], [2.0, 0.5]),
    ("huber", {"delta": 1.0}, [2.0, 0.5], [0.0, 0.0], [1.5, 0.125]),
    ("smooth_l1", {"beta": 0.5}, [2.0, 0.25], [0.0, 0.0], [1.75, 0.0625]),
    ("pinball", {"tau": 0.9}, [0.0, 1.0], [1.0, 0.0], [0.9, 0.1]),
    ("logcosh", {"scale": 1.0}, [1.0], [0.0], [math.log(math.cosh(1.0))]),
    ("cauchy", {"scale": 1.0}, [1.0], [0.0], [0.5 * math.log(2.0)]),
    ("welsch", {"scale": 1.0}, [1.0], [0.0], [0.5 * (1 - math.exp(-1.0))]),
    ("geman_mcclure", {"scale": 1.0}, [1.0], [0.0], [0.25]),
    ("pseudo_huber", {"delta": 1.0}, [1.0], [0.0], [ROOT2 - 1]),
    ("tukey", {"c": 1.0}, [2.0, 0.0], [0.0, 0.0], [1 / 6, 0.0]),
    ("gaussian_nll", {"sigma": 1.0}, [0.0], [0.0], [0.5 * math.log(2 * math.pi)]),
    ("student_t_nll", {"nu": 1.0, "sigma": 1.0}, [0.0], [0.0], [math.log(math.pi)]),  # Cauchy
    ("ce", {}, [[0.0, 0.0, 0.0, 0.0]], [2], [math.log(4.0)]),
    ("focal", {"gamma": 2.0}, [[0.0, 0.0]], [1], [0.25 * math.log(2.0)]),
    ("mae_prob", {}, [[0.0, 0.0, 0.0, 0.0]], [0], [1.5]),
    ("brier", {}, [[0.0, 0.0, 0.0, 0.0]], [0], [0.75]),
    ("gce", {"q": 1.0}, [[0.0, 0.0, 0.0, 0.0]], [3], [0.75]),
    ("sce", {"alpha": 1.0, "beta": 1.0}, [[0.0, 0.0]], [0], [math.log(2.0) + 2.0]),
    ("poly1", {"epsilon": 1.0}, [[0.0, 0.0]], [0], [math.log(2.0) + 0.5]),
    ("label_smoothing", {"eps": 0.5}, [[0.0, 0.0]], [0], [math.log(2.0)]),
    ("bce", {}, [[0.0, 0.0]], [[1.0, 0.0]], [math.log(2.0)]),
    ("soft_f1", {"smooth": 1.0}, [[0.0, 0.0]], [[1.0, 0.0]], [1 / 3]),
    (
        "triplet",
        {"margin": 0.2},
        [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]],
        [0, 0, 1],
        [0.2 + ROOT2, 0.2, 0.0],
    ),
    (
        "supcon",
        {"temperature": 1.0},
        [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]],
        [0, 0, 1],
        [math.log(math.e + 1) - 1, math.log(math.e + 1) - 1, 0.0],
    ),
    (
        "infonce",
        {"temperature": 1.0},
        [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]],
        [0, 0, 1],
        math.log(math.e + 1) - 1,
    ),
    (
        "varcov",
        {"gamma": 1.0, "cov_weight": 1.0},
        [[1.0, 1.0], [-1.0, -1.0]],
        [0, 1],
        4.0,
    ),  # std sqrt(2 + 1e-4) > gamma: no variance term; off-diagonal cov 2 twice, 2 * 2**2 / F
]


@pytest.mark.parametrize(("name", "hp", "output", "target", "expected"), PINNED)
def test_pinned_values(
    name: str, hp: dict[str, float], output: list[Any], target: list[Any], expected: Any
) -> None:
    out = torch.tensor(output, dtype=torch.float64)
    integer = isinstance(target[0], int)
    tgt = torch.tensor(target, dtype=torch.long if integer else torch.float64)
    got = registry.create(name, **hp)(out, tgt)
    np.testing.assert_allclose(got.numpy(), np.asarray(expected), rtol=1e-12, atol=1e-12)
