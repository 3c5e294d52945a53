"""Fuzzing the composer: random task sets, shapes, dtypes and non-finite values. Every call
either raises a clear error (``ValueError``/``TypeError`` naming the task or argument) and
changes nothing, or trains: a skipped step leaves the method's state as it was, a trained step
leaves finite gradients."""

from __future__ import annotations

import copy

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import lossrag

METHODS = ["ew", "uw", "dwa", "famo", "rlw", "stch", "mgda", "pcgrad", "lossrag"]


class _Net(nn.Module):
    def __init__(self, tasks: list[lossrag.Task], dims: dict[str, int]) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(5, 8), nn.ReLU())
        self.heads = nn.ModuleDict({t.name: nn.Linear(8, dims[t.name]) for t in tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {
            n: head(h).squeeze(-1) if head.out_features == 1 else head(h)
            for n, head in self.heads.items()
        }


@st.composite
def _problem(draw):
    kinds = draw(
        st.lists(
            st.sampled_from(["regression", "classification", "multilabel"]), min_size=1, max_size=4
        )
    )
    tasks, dims = [], {}
    for i, kind in enumerate(kinds):
        name = draw(st.sampled_from(["a", "b:x", "task c", "ü"])) + str(i)
        if kind == "regression":
            tasks.append(lossrag.Task(name, kind="regression"))
            dims[name] = draw(st.sampled_from([1, 3]))
        else:
            classes = draw(st.integers(2, 5))
            tasks.append(lossrag.Task(name, kind=kind, num_classes=classes))
            dims[name] = classes
    return tasks, dims, draw(st.sampled_from(METHODS))


def _batch(tasks, dims, n, g):
    x = torch.randn(n, 5, generator=g)
    y = {}
    for t in tasks:
        d = dims[t.name]
        if t.kind == "regression":
            y[t.name] = torch.randn(n, generator=g) if d == 1 else torch.randn(n, d, generator=g)
        elif t.kind == "classification":
            y[t.name] = torch.randint(0, d, (n,), generator=g)
        else:
            y[t.name] = torch.randint(0, 2, (n, d), generator=g).float()
    return x, y


_MUTATIONS = [
    "bf16_output",
    "none",
    "nan_target",
    "inf_output",
    "wrong_shape",
    "wrong_dtype",
    "bad_label",
    "missing",
    "extra",
]


def _mutate(kind, outputs, targets, tasks, dims):
    name = tasks[0].name
    if kind == "nan_target" and targets[name].is_floating_point():
        targets[name] = targets[name].clone()
        targets[name].view(-1)[0] = float("nan")
    elif kind == "bf16_output":
        outputs[name] = outputs[name].to(torch.bfloat16)
    elif kind == "inf_output":
        outputs[name] = outputs[name] * torch.tensor(float("inf"))
    elif kind == "wrong_shape":
        targets[name] = targets[name][:-1]
    elif kind == "wrong_dtype":
        targets[name] = (
            targets[name].double()
            if not targets[name].is_floating_point()
            else targets[name].long()
        )
    elif kind == "bad_label" and tasks[0].kind == "classification":
        targets[name] = targets[name].clone()
        targets[name][0] = dims[name] + 3
    elif kind == "missing":
        del targets[name]
    elif kind == "extra":
        targets["nope"] = targets[name]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _problem(), st.lists(st.sampled_from(_MUTATIONS), min_size=1, max_size=4), st.integers(0, 2**16)
)
def test_composer_raises_clearly_or_trains(problem, mutations, seed):
    tasks, dims, method = problem
    torch.manual_seed(seed)
    model = _Net(tasks, dims)
    composer = lossrag.wrap(model, tasks, method, shared=model.trunk, seed=seed, max_skips=100)
    g = torch.Generator().manual_seed(seed)
    for mutation in ["none", *mutations]:
        x, y = _batch(tasks, dims, 6, g)
        outputs = model(x)
        _mutate(mutation, outputs, y, tasks, dims)
        before = copy.deepcopy(composer.state_dict())
        model.zero_grad(set_to_none=True)
        try:
            record = composer.backward(outputs, y)
        except (ValueError, TypeError) as err:
            message = str(err)
            assert (
                any(t.name in message for t in tasks) or "Composer" in message or "nope" in message
            ), message
            assert _same(before, composer.state_dict())
            continue
        if record.skipped:
            assert _same(before["method"], composer.state_dict()["method"]), record.reason
            assert all(
                p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters()
            )
        else:
            assert all(
                p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters()
            )


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and bool(
            torch.equal(a, b)
            or ((a.isnan() == b.isnan()).all() and torch.equal(a.nan_to_num(), b.nan_to_num()))
        )
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (a != a and b != b)
