"""Auto-Lambda against its published update rule (Liu et al. 2022; the authors' code), by hand."""

from __future__ import annotations

import copy

import pytest
import torch

import lossrag
from lossrag.weighting import AutoLambda


def _task_losses(model, x, y, tasks):
    out = model(x)
    return torch.stack(
        [lossrag.registry.create(t.loss or "")(out[t.name], y[t.name]).mean() for t in tasks]
    )


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_one_step_matches_the_published_rule(digits, momentum):
    torch.manual_seed(0)
    model = digits.model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum, weight_decay=1e-3)
    # one plain SGD step first, so that the momentum buffers exist
    x0, y0 = digits.batch(5)
    opt.zero_grad()
    _task_losses(model, x0, y0, digits.tasks).sum().backward()
    opt.step()
    qx, qy = digits.batch(9)
    x, y = digits.batch(0)

    # by hand, as the authors' virtual_step / compute_hessian do it
    lam = torch.full((3,), 0.1, requires_grad=True)
    ref = copy.deepcopy(model)
    params = [p for p in ref.parameters()]
    grads = torch.autograd.grad(
        (lam.detach() * _task_losses(ref, x, y, digits.tasks)).sum(), params
    )
    virtual = copy.deepcopy(ref)
    with torch.no_grad():
        for p, q, g in zip(params, virtual.parameters(), grads, strict=True):
            m = opt.state[dict(zip(params, model.parameters(), strict=True))[p]].get(
                "momentum_buffer"
            )
            m = 0.0 if m is None else momentum * m
            q.copy_(p - 0.05 * (m + g + 1e-3 * p))
    v = torch.autograd.grad(
        _task_losses(virtual, qx, qy, digits.tasks).sum(), list(virtual.parameters())
    )
    eps = 0.01 / torch.cat([t.flatten() for t in v]).norm()
    with torch.no_grad():
        plus, minus = copy.deepcopy(ref), copy.deepcopy(ref)
        for a, b, d in zip(plus.parameters(), minus.parameters(), v, strict=True):
            a.add_(eps * d)
            b.sub_(eps * d)
        diff = _task_losses(plus, x, y, digits.tasks) - _task_losses(minus, x, y, digits.tasks)
    lam.grad = -0.05 * diff / (2 * eps)
    adam = torch.optim.Adam([lam], lr=1e-4)
    adam.step()

    method = AutoLambda()
    composer = lossrag.wrap(model, digits.tasks, method, query=[(qx, qy)], optimizer=opt)
    before = copy.deepcopy(model.state_dict())
    record = composer.backward(model(x), y)
    torch.testing.assert_close(method.weights.detach(), lam.detach(), rtol=1e-5, atol=1e-8)
    assert [t.weight for t in record.terms] == pytest.approx(lam.detach().tolist())
    after = model.state_dict()  # the look-ahead wrote nothing into the model
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_autolambda_needs_a_query_set(digits):
    model = digits.model(0)
    with pytest.raises(ValueError, match="learns from held-out batches"):
        lossrag.wrap(model, digits.tasks, "autolambda")


def test_metaweighting_one_step_matches_its_update_rule(digits):
    """ω ← normalise(ω − β·d*/RMS(d*)), d* the min-norm point of the per-task hypergradients
    d_t[i] = −η⟨∇L_i(θ), ∇L_t^Q(θ − η Σ ω g)⟩, here with exact per-term gradients."""
    from lossrag.minnorm import common_direction
    from lossrag.weighting import MetaWeighting

    torch.manual_seed(0)
    model = digits.model(0).double()  # float64: the finite differences are then exact enough
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def double(batch):
        x, y = batch
        return x.double(), {k: v.double() if v.is_floating_point() else v for k, v in y.items()}

    (qx, qy), (x, y) = double(digits.batch(9)), double(digits.batch(0))
    params = list(model.parameters())
    losses = _task_losses(model, x, y, digits.tasks)
    g = [torch.autograd.grad(v, params, retain_graph=True) for v in losses]
    ahead = copy.deepcopy(model)
    with torch.no_grad():
        for i, q in enumerate(ahead.parameters()):
            q.sub_(0.05 * sum(g[k][i] for k in range(3)))
    query = _task_losses(ahead, qx, qy, digits.tasks)
    v = [torch.autograd.grad(q, list(ahead.parameters()), retain_graph=True) for q in query]
    d = torch.tensor(
        dtype=torch.float64,
        data=[
            [-0.05 * sum((a * b).sum() for a, b in zip(g[i], v[t], strict=True)) for i in range(3)]
            for t in range(3)
        ],
    )
    direction = common_direction(d)
    expected = (
        torch.ones(3, dtype=torch.float64) - 1e-2 * direction / direction.pow(2).mean().sqrt()
    ).clamp_min(1e-3)
    expected = expected * 3 / expected.sum()

    method = MetaWeighting(eps=1e-5)  # a small step: the reference uses exact gradients
    composer = lossrag.wrap(model, digits.tasks, method, query=[(qx, qy)], optimizer=opt)
    composer.backward(model(x), y)
    torch.testing.assert_close(method.last_hypergradients, d, rtol=1e-5, atol=1e-9)
    print(direction, common_direction(method.last_hypergradients), d)
    torch.testing.assert_close(method.weights.double(), expected, rtol=1e-5, atol=1e-6)
