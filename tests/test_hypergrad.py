"""Look-ahead hypergradients: every way agrees in float64; the live model is never touched."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lossrag.meta import WAYS, Functional, delayed_utilities, directional, hypergradients


class _Net(nn.Module):
    def __init__(self, batchnorm: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(5, 8)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(8))
        layers.append(nn.Tanh())
        self.trunk = nn.Sequential(*layers)
        self.reg = nn.Linear(8, 1)
        self.cls = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {"reg": self.reg(h).squeeze(1), "cls": self.cls(h)}


def _terms(call, batch):
    x, y = batch
    out = call(x)
    return torch.stack(
        [
            F.mse_loss(out["reg"], y["reg"]),
            F.huber_loss(out["reg"], y["reg"], delta=0.5),
            F.cross_entropy(out["cls"], y["cls"]),
        ]
    )


def _query(call, batch):
    return _terms(call, batch).sum()


def _setup(batchnorm: bool):
    torch.manual_seed(0)
    model = _Net(batchnorm).double()
    g = torch.Generator().manual_seed(1)

    def batch(n: int):
        x = torch.randn(n, 5, generator=g, dtype=torch.float64)
        return x, {"reg": x[:, 0] * 2 + 0.1, "cls": (x[:, 1] > 0).long() + (x[:, 2] > 1).long()}

    return model, Functional(model, _terms), Functional(model, _query), batch(16), batch(16)


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("adam", [False, True])
def test_every_way_agrees_in_float64(batchnorm, adam):
    model, terms, query, batch, query_batch = _setup(batchnorm)
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    precondition = (
        {n: torch.rand_like(p) + 0.5 for n, p in model.named_parameters()} if adam else None
    )
    before = copy.deepcopy(model.state_dict())
    results = {
        way: hypergradients(
            terms,
            query,
            batch,
            query_batch,
            weights,
            lr=0.1,
            way=way,
            precondition=precondition,
            eps=1e-6,
        )
        for way in WAYS
    }
    exact = results["exact"]
    assert exact.abs().min() > 0
    for way in ("per_term", "jvp"):
        torch.testing.assert_close(results[way], exact, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(results["central"], exact, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(results["forward"], exact, rtol=1e-4, atol=1e-7)
    after = model.state_dict()  # parameters and BatchNorm buffers untouched
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_identity_is_the_derivative_of_the_look_ahead_query_loss():
    """Check the exact way against a numerical derivative of L_Q(θ − α Σ w g) in w."""
    _, terms, query, batch, query_batch = _setup(False)
    w = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    theta = {n: p.requires_grad_(True) for n, p in terms.params().items()}

    def query_after(weights: torch.Tensor) -> float:
        grads = torch.autograd.grad((weights * terms(theta, batch)).sum(), list(theta.values()))
        ahead = {n: theta[n] - 0.1 * g for n, g in zip(theta, grads, strict=True)}
        return float(query(ahead, query_batch).detach())

    h = 1e-6
    numeric = torch.tensor(
        [
            (query_after(w + h * e) - query_after(w - h * e)) / (2 * h)
            for e in torch.eye(3, dtype=torch.float64)
        ],
        dtype=torch.float64,
    )
    exact = hypergradients(terms, query, batch, query_batch, w, lr=0.1, way="exact")
    torch.testing.assert_close(exact, numeric, rtol=1e-6, atol=1e-9)


def test_delayed_way_is_the_hypergradient_of_the_real_step():
    """With SGD at lr α and weights w, the real next iterate is the look-ahead: the delayed
    utilities at θ_t with v = ∇L_Q(θ_{t+1}) equal the look-ahead hypergradient."""
    model, terms, query, batch, query_batch = _setup(False)
    w = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    previous = terms.params()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    (w * _terms(model, batch)).sum().backward()
    opt.step()
    after = {n: p.requires_grad_(True) for n, p in terms.params().items()}
    v = torch.autograd.grad(query(after, query_batch), list(after.values()))
    got = delayed_utilities(
        terms, previous, batch, dict(zip(after, v, strict=True)), lr=0.1, way="jvp"
    )
    model_prev = _Net(False).double()
    model_prev.load_state_dict({**model.state_dict(), **previous})
    expected = hypergradients(
        Functional(model_prev, _terms),
        Functional(model_prev, _query),
        batch,
        query_batch,
        w,
        lr=0.1,
        way="exact",
    )
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_directional_rejects_unknown_ways_and_zero_directions():
    _, terms, _, batch, _ = _setup(False)
    theta = terms.params()
    zero = {n: torch.zeros_like(p) for n, p in theta.items()}
    assert torch.equal(directional(terms, theta, batch, zero), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown way"):
        directional(
            terms, theta, batch, {n: torch.ones_like(p) for n, p in theta.items()}, way="bad"
        )  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown way"):
        hypergradients(terms, terms, batch, batch, torch.ones(3), 0.1, way="bad")  # type: ignore[arg-type]
