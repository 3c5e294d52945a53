"""Typed term keys: names holding ':' work end to end, and states keyed the old way still load."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lossrag
from lossrag import Task
from lossrag.context import LossTracker
from lossrag.keys import TermKey, nest, parse_key, unnest
from lossrag.models import MultiTaskMLP
from lossrag.policy import Gates, LossRAG
from lossrag.policy.store import DefaultPolicy

TASKS = [
    Task("a:x", kind="classification", num_classes=10),
    Task("b", kind="regression", metric="mae"),
]
_SETTINGS = {"refresh_every": 2, "retrieve_every": 1, "patience": 1}
_POLICIES = {"lossrag": LossRAG, "default": DefaultPolicy}


def _batch(digits, i):
    x, y = digits.batch(i)
    return x, {"a:x": y["digit"], "b": y["ink"]}


def _wrap(digits, policy, seed=0, online=False):
    torch.manual_seed(seed)
    model = MultiTaskMLP(64, [32, 16], TASKS)
    meta = {
        "query": [_batch(digits, 100 + i) for i in range(4)],
        "meta_every": 2,
        "meta_objective": "transfer",  # splits the utilities by each term's task
    }
    composer = lossrag.wrap(
        model,
        TASKS,
        _POLICIES[policy](**_SETTINGS),
        shared=model.trunk,
        seed=0,
        **(meta if online else {}),
    )
    return model, composer


def _train(digits, model, composer, start, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    records = []
    for i in range(start, start + steps):
        x, y = _batch(digits, i)
        opt.zero_grad()
        records.append(composer.backward(model(x), y))
        opt.step()
    return records


def _saved(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _resume(digits, policy, weights, state, start, steps, online=False):
    fresh_model, fresh = _wrap(digits, policy, seed=1, online=online)
    fresh_model.load_state_dict(weights)
    fresh.load_state_dict(state)
    return fresh, _train(digits, fresh_model, fresh, start, steps)


def _legacy(state):
    """``state`` as written before term keys were typed: maps keyed by ``"task:loss"``, the
    effective rank as the fourth item of ``retrieval``."""

    def flat(nested):
        return {f"{t}:{loss}": v for t, values in nested.items() for loss, v in values.items()}

    old = copy.deepcopy(state)
    method = old["method"]
    for name in ("scores", "weights", "utility"):
        method[name] = flat(method[name])
    method["tracker"] = {k: flat(v) for k, v in method["tracker"].items()}
    method["gates"] = {"count": flat(method["gates"]["count"])}
    method["retrieval"] = [*method["retrieval"], method.pop("rank")]
    return old


def _terms(records):
    return [
        (r.losses, [(t.task, t.loss, t.weight, t.active, t.score, t.utility) for t in r.terms])
        for r in records
    ]


@pytest.mark.parametrize("policy", ["lossrag", "default"])
def test_a_task_name_with_a_colon_adapts_online(digits, policy):
    model, composer = _wrap(digits, policy, online=True)
    records = _train(digits, model, composer, 0, 8)
    measured = {t.task for r in records for t in r.terms if t.utility is not None}
    assert measured == {"a:x", "b"}  # meta-steps: utilities by term
    assert {k.task for k in composer.method.learner.utility} == {"a:x", "b"}
    assert not any(r.skipped or r.reason for r in records)


@pytest.mark.parametrize("policy", ["lossrag", "default"])
def test_a_task_name_with_a_colon_trains_records_and_resumes(digits, policy):
    model, composer = _wrap(digits, policy)
    records = _train(digits, model, composer, 0, 9)
    retrievals = [r for r in records if any(not t.active for t in r.terms)]
    assert len(retrievals) >= 2
    for r in records:
        assert set(r.losses) == {"a:x", "b"} and not r.skipped
        assert sum(w for w in r.task_weights().values() if w is not None) == pytest.approx(2.0)
    listed = {t.task for r in retrievals for t in r.terms if not t.active}
    assert listed == {"a:x", "b"}
    method = composer.method
    assert all(isinstance(k, TermKey) for k in method.weights)
    assert {k.task for k in method.weights} == {"a:x", "b"}
    assert TermKey("a:x", "ce") in method.tracker.ema
    state, weights = _saved(composer.state_dict()), copy.deepcopy(model.state_dict())
    plain = {k: v for k, v in state["method"].items() if k not in ("correction", "meta_optimizer")}
    assert set(json.loads(json.dumps(plain))["weights"]) == {"a:x", "b"}
    straight = _train(digits, model, composer, 9, 5)
    again, resumed = _resume(digits, policy, weights, state, 9, 5)
    assert _terms(resumed) == _terms(straight)
    assert again.method.weights == method.weights


@pytest.mark.parametrize("online", [False, True])
def test_an_old_state_keyed_by_strings_loads(digits, online):
    model, composer = _wrap(digits, "lossrag", online=online)
    _train(digits, model, composer, 0, 7)
    state, weights = composer.state_dict(), model.state_dict()
    new, from_new = _resume(digits, "lossrag", weights, _saved(state), 7, 5, online)
    old, from_old = _resume(digits, "lossrag", weights, _saved(_legacy(state)), 7, 5, online)
    assert _terms(from_old) == _terms(from_new)
    assert bool(old.method.learner.utility) == online
    for name in ("scores", "weights", "multipliers", "candidates", "active"):
        assert getattr(old.method, name) == getattr(new.method, name)
    assert old.method.learner.utility == new.method.learner.utility
    assert old.method.gates.count == new.method.gates.count
    assert old.method.tracker.log_mark == new.method.tracker.log_mark


_names = st.text(alphabet="ab:(=.)", min_size=1, max_size=8)


@given(st.dictionaries(st.tuples(_names, _names), st.floats(allow_nan=False), max_size=6))
def test_nest_and_unnest_are_inverse_for_names_with_colons(values):
    keyed = {TermKey(t, loss): v for (t, loss), v in values.items()}
    assert unnest(json.loads(json.dumps(nest(keyed)))) == keyed


def test_old_string_keys_split_at_the_longest_known_task():
    assert parse_key("a:x:huber(delta=1)", ["a", "a:x"]) == TermKey("a:x", "huber(delta=1)")
    assert parse_key("b:l2", ["a:x"]) == TermKey("b", "l2")  # unknown task: the last colon
    with pytest.raises(ValueError, match="task:loss"):
        parse_key("l2")


def test_tracker_and_gates_keep_a_loss_id_with_colons():
    key = TermKey("a:x", "odd:loss:id")
    tracker, gates = LossTracker(), Gates(patience=2)
    tracker.update(0, {key: 2.0})
    gates.update(key, -1.0, active=True)
    again_tracker, again_gates = LossTracker(), Gates(patience=2)
    again_tracker.load_state_dict(json.loads(json.dumps(tracker.state_dict())))
    again_gates.load_state_dict(json.loads(json.dumps(gates.state_dict())))
    assert again_tracker.ema == {key: 2.0} and again_gates.count == {key: 1}
