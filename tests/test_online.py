"""Online meta-adaptation from a query stream: utilities recorded, bad query input refused."""

from __future__ import annotations

import math

import pytest
import torch

import lossrag
from lossrag.keys import TermKey
from lossrag.policy import LossRAG


def _query(digits, n=3, start=100):
    return [digits.batch(start + i) for i in range(n)]


def _online(digits, policy, queries=20, meta_every=2, **options):
    """A model and its composer adapting online from ``queries`` query batches."""
    model = digits.model(0)
    composer = lossrag.wrap(
        model,
        digits.tasks,
        policy,
        shared=model.trunk,
        query=_query(digits, queries),
        meta_every=meta_every,
        seed=0,
        **options,
    )
    return model, composer


def _meta_steps(composer):
    """The steps whose record carries a meta-step's utilities (filled while training)."""
    steps: list[int] = []
    original = composer.meta.step

    def step():
        utilities, note = original()
        if utilities is not None:
            steps.append(composer.step)
        return utilities, note

    composer.meta.step = step
    return steps


def _train(digits, composer, model, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    records = []
    for i in range(steps):
        x, y = digits.batch(i)
        opt.zero_grad()
        records.append(composer.backward(model(x), y))
        opt.step()
    return records


@pytest.mark.parametrize("objective", ["sum", "common", "transfer"])
def test_meta_steps_record_finite_utilities_for_every_candidate(digits, objective):
    model, composer = _online(
        digits, LossRAG(refresh_every=4), meta_every=3, meta_objective=objective
    )
    before = [p.detach().clone() for p in model.parameters()]
    steps = _meta_steps(composer)
    records = _train(digits, composer, model, 8)
    assert steps == [1, 4, 7]
    meta = [records[i] for i in steps]
    for r in meta:
        assert "meta" in r.timings
        listed = [t for t in r.terms if t.utility is not None]
        assert {t.task for t in listed} == {"digit", "parity", "ink"}
        assert any(not t.active for t in listed)  # switched-off candidates are measured too
        assert all(math.isfinite(t.utility) for t in listed)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_query_stream_cycles_with_a_warning(digits):
    model = digits.model(0)
    composer = lossrag.wrap(
        model, digits.tasks, "lossrag", shared=model.trunk, query=_query(digits, 1), meta_every=1
    )
    with pytest.warns(UserWarning, match="ran out"):
        _train(digits, composer, model, 4)


def test_bad_query_input_is_refused(digits):
    model = digits.model(0)
    with pytest.raises(ValueError, match="learns from held-out batches"):
        lossrag.wrap(model, digits.tasks, "lossrag-online", shared=model.trunk)
    with pytest.raises(ValueError, match="does not learn from a query set"):
        lossrag.wrap(model, digits.tasks, "ew", query=_query(digits))
    with pytest.raises(ValueError, match="meta_objective must be 'sum', 'common' or 'transfer'"):
        lossrag.wrap(
            model, digits.tasks, "lossrag", shared=model.trunk, query=[], meta_objective="mean"
        )
    with pytest.raises(ValueError, match=r"query_tasks must name .*digit, parity, ink.*'dgit'"):
        lossrag.wrap(
            model, digits.tasks, "lossrag", shared=model.trunk, query=[], query_tasks=["dgit"]
        )
    with pytest.raises(ValueError, match="query_tasks must name at least one"):
        lossrag.wrap(model, digits.tasks, "autolambda", query=[], query_tasks=[])
    with pytest.raises(ValueError, match="meta_every"):
        lossrag.wrap(model, digits.tasks, "lossrag", shared=model.trunk, query=[], meta_every=0)

    def run(query):
        m = digits.model(0)
        c = lossrag.wrap(m, digits.tasks, "lossrag", shared=m.trunk, query=query, meta_every=1)
        _train(digits, c, m, 2)

    with pytest.raises(ValueError, match="`query` iterable is empty"):
        run([])
    x, y = digits.batch(0)
    with pytest.raises(ValueError, match=r"targets for \['digit', 'parity'\]"):
        run([(x, {"digit": y["digit"], "parity": y["parity"]})])
    with pytest.raises(ValueError, match=r"inputs of shape \(32, 10\)"):
        run([(x[:, :10], y)])
    # a class index out of range failed deep in the objective, naming neither task nor query
    with pytest.raises(ValueError, match=r"Task 'digit' .* in a `query` batch: class indices"):
        run([(x, dict(y, digit=torch.full_like(y["digit"], 11)))])
    with pytest.raises(ValueError, match=r"Task 'digit' .* expected integer class indices"):
        run([(x, dict(y, digit=y["digit"].float()))])


def test_a_non_finite_query_loss_skips_the_meta_step(digits):
    model = digits.model(0)
    x, y = digits.batch(0)
    bad = (x, dict(y, ink=torch.full_like(y["ink"], float("nan"))))
    composer = lossrag.wrap(
        model, digits.tasks, "lossrag", shared=model.trunk, query=[bad], meta_every=1
    )
    first = _train(digits, composer, model, 1)[0]
    before = dict(composer.method.weights)
    second = composer.backward(model(x), y)
    assert not first.reason
    assert "meta-step skipped (non-finite query loss" in (second.reason or "")
    assert not second.skipped
    assert composer.method.weights == before  # the last good weights are kept


@pytest.mark.parametrize("objective", ["sum", "transfer"])
def test_query_tasks_choose_the_objective_and_keep_their_losses_on(digits, objective, monkeypatch):
    """With ``query_tasks=["digit"]`` only digit's query loss is differentiated: the utilities
    are ``−⟨∇L_c, P∇L_Q,digit⟩``, and never switch digit's own loss off; with ``transfer`` digit's
    candidates get no utility from their own task (0)."""
    policy = LossRAG(refresh_every=4)
    model, composer = _online(digits, policy, meta_objective=objective, query_tasks=["digit"])
    assert composer.meta is not None and composer.meta.query_index == [0]
    gated: list[TermKey] = []  # by the meta-steps (the refreshes gate on the evidence)
    original, update = policy._gate, policy.meta_update
    inside: list[bool] = []

    def gate(utilities):
        if inside:
            gated.extend(k for k, _ in utilities)
        return original(utilities)

    def meta_update(*args, **kwargs):
        inside.append(True)
        try:
            return update(*args, **kwargs)
        finally:
            inside.pop()

    monkeypatch.setattr(policy, "_gate", gate)
    monkeypatch.setattr(policy, "meta_update", meta_update)
    steps = _meta_steps(composer)
    records = _train(digits, composer, model, 6)
    meta = [records[i] for i in steps]
    assert meta and gated
    assert TermKey("digit", policy.natural["digit"]) not in gated
    assert TermKey("ink", policy.natural["ink"]) in gated
    own = [t.utility for r in meta for t in r.terms if t.task == "digit" and t.utility is not None]
    if objective == "transfer":
        assert own and all(u == 0.0 for u in own)
    else:
        assert any(u != 0.0 for u in own)


def test_query_objectives_follow_each_metric():
    """Each metric's query objective: its exact value where the metric is smooth already, and
    the metric itself where predictions are confident (soft F1 = F1 when p is one-hot)."""
    from lossrag import Task
    from lossrag.meta.objectives import aligned
    from lossrag.metrics import f1

    y, t = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 0.0, 0.0])
    mae = aligned(Task("r", kind="regression", metric="mae"))
    rmse = aligned(Task("r", kind="regression", metric="rmse"))
    assert mae is not None and rmse is not None
    assert float(mae(y, t)) == pytest.approx(3.5 / 3) and float(rmse(y, t)) == pytest.approx(1.75)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    logits = 30 * torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 2, 2, 0]), 3).float()
    for metric in ("accuracy", "f1"):
        objective = aligned(Task("c", kind="classification", num_classes=3, metric=metric))
        assert objective is not None
        score = f1(logits, labels) if metric == "f1" else 4 / 6
        assert float(objective(logits, labels)) == pytest.approx(1 - score, abs=1e-6)
    multi = torch.tensor([[1, 0, 1], [0, 0, 1]])
    confident = 30 * (2 * torch.tensor([[1, 1, 1], [0, 0, 1]]).float() - 1)
    micro = aligned(Task("m", kind="multilabel", num_classes=3, metric="f1"))
    share = aligned(Task("m", kind="multilabel", num_classes=3, metric="accuracy"))
    assert micro is not None and share is not None
    assert f1(confident, multi, "multilabel") == pytest.approx(6 / 7)  # smoothed: 7/8
    assert float(micro(confident, multi)) == pytest.approx(1 / 8, abs=1e-6)
    assert float(share(confident, multi)) == pytest.approx(1 / 6, abs=1e-6)
    x = torch.randn(6, 3, requires_grad=True)
    objective = aligned(Task("c", kind="classification", num_classes=3, metric="f1"))
    assert objective is not None
    objective(x, labels).backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)  # smooth: it has a gradient


@pytest.mark.parametrize("which", ["metric", "natural"])
def test_the_query_loss_is_the_metric_objective_or_the_natural_loss(digits, which):
    policy = LossRAG(refresh_every=4)
    model, composer = _online(digits, policy, queries=4, query_objective=which)
    _train(digits, composer, model, 3)  # a meta-step at step 1
    assert composer.meta is not None
    x, y = digits.batch(50)
    with torch.no_grad():
        out = model(x)
        got = policy.query_losses(out, y, None, composer.meta.objectives)
    natural = policy.query_losses(out, y, None)
    tasks = list(policy.tasks)
    digit, ink = tasks.index("digit"), tasks.index("ink")
    state = composer.meta.state_dict()
    assert state["query_objective"] == which and state["query_scale"]
    other = "natural" if which == "metric" else "metric"
    composer.meta.load_state_dict({**state, "query_objective": other})
    assert composer.meta.query_scale == {}  # running means of another objective start again
    composer.meta.load_state_dict(state)
    assert composer.meta.query_scale == state["query_scale"]
    if which == "natural":
        torch.testing.assert_close(got, natural)
    else:
        p_true = out["digit"].softmax(-1).gather(1, y["digit"].view(-1, 1)).mean()
        assert float(got[digit]) == pytest.approx(1 - float(p_true), rel=1e-5)
        assert float(got[ink]) == pytest.approx(float((out["ink"] - y["ink"]).abs().mean()))
        assert float(got[digit]) != pytest.approx(float(natural[digit]))


def test_a_metric_without_an_aligned_objective_keeps_the_natural_loss_and_says_so(
    digits, monkeypatch
):
    from lossrag.meta import objectives

    monkeypatch.delitem(objectives._ALIGNED, ("regression", "mae"))
    model, composer = _online(digits, LossRAG(refresh_every=4), queries=4)
    steps = _meta_steps(composer)
    records = _train(digits, composer, model, 6)
    notes = [records[i].reason for i in steps]
    assert notes[0] == (
        "query objective: the natural loss for ink (mae), whose metric has no aligned objective"
    )
    assert not any(notes[1:])
    assert composer.meta is not None and "ink" not in composer.meta.objectives
    with pytest.raises(ValueError, match="query_objective"):
        lossrag.wrap(model, digits.tasks, "lossrag", query=_query(digits), query_objective="l1")
