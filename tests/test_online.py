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
    model = digits.model(0)
    composer = lossrag.wrap(
        model,
        digits.tasks,
        LossRAG(refresh_every=4),
        shared=model.trunk,
        query=_query(digits, 20),
        meta_every=3,
        seed=0,
        meta_objective=objective,
    )
    before = [p.detach().clone() for p in model.parameters()]
    records = _train(digits, composer, model, 8)
    meta = [r for r in records if any(t.utility is not None for t in r.terms)]
    assert [r.step for r in meta] == [1, 4, 7]
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
    model = digits.model(0)
    policy = LossRAG(refresh_every=4)
    composer = lossrag.wrap(
        model,
        digits.tasks,
        policy,
        shared=model.trunk,
        query=_query(digits, 20),
        meta_every=2,
        seed=0,
        meta_objective=objective,
        query_tasks=["digit"],
    )
    assert composer.meta is not None and composer.meta.query_index == [0]
    gated: list[TermKey] = []
    original = policy._gate
    monkeypatch.setattr(policy, "_gate", lambda b: (gated.extend(k for k, _ in b), original(b))[1])
    records = _train(digits, composer, model, 6)
    meta = [r for r in records if any(t.utility is not None for t in r.terms)]
    assert meta and gated
    assert TermKey("digit", policy.natural["digit"]) not in gated
    assert TermKey("ink", policy.natural["ink"]) in gated
    own = [t.utility for r in meta for t in r.terms if t.task == "digit" and t.utility is not None]
    if objective == "transfer":
        assert own and all(u == 0.0 for u in own)
    else:
        assert any(u != 0.0 for u in own)
