"""The retrieval policy: equivariance, gates, floor, weights, fallbacks, resume, inspection."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lossrag
from lossrag.cli import app
from lossrag.context import TERM_FEATURES
from lossrag.keys import TermKey
from lossrag.policy import FEATURES, Correction, Gates, LossRAG, Prior
from lossrag.record import read_trace


def test_correction_is_permutation_equivariant_and_starts_at_zero():
    torch.manual_seed(0)
    net = Correction(FEATURES)
    x = torch.randn(7, FEATURES)
    group = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    assert torch.equal(net(x, group), torch.zeros(7))
    for p in net.parameters():  # a trained correction: still equivariant
        torch.nn.init.normal_(p)
    out = net(x, group)
    perm = torch.randperm(7)
    torch.testing.assert_close(net(x[perm], group[perm]), out[perm])
    relabel = torch.tensor([2, 0, 1])  # renaming the tasks changes nothing either
    torch.testing.assert_close(net(x, relabel[group]), out)


def test_gates_switch_only_after_patience_and_recover():
    g = Gates(patience=3, patience_on=2)
    states = [g.update("t", u, active=True)[0] for u in (-1, -1, 1, -1, -1)]
    assert states == [True] * 5  # the positive utility reset the count
    state, why = g.update("t", -1, active=True)
    assert not state and why == "off: utility < 0 for 3 updates"
    assert g.update("t", 0.5, active=False) == (False, None)
    state, why = g.update("t", 0.5, active=False)
    assert state and why is not None and why.startswith("on:")
    with pytest.raises(ValueError, match="patience"):
        Gates(patience=0)


def test_prior_damps_unlearnable_tasks_within_a_loss_group():
    prior = Prior()
    scores = prior.task_scores(
        norm_ratio=[0.5, -3.0, -1.0, 2.0],
        cos_mean=[0.5, 0.0, 0.0, 0.5],
        slopes=[-0.1, 0.0, 0.0, -0.3],
        groups=["l2", "l2", "ce", "l2"],
    )
    assert scores[1] < scores[0] and scores[1] < scores[3]
    assert scores[2] == 0.0  # alone in its group: only its alignment counts, here 0


def _run(digits, policy, steps, model=None, composer=None, start=0, trace=None):
    model = model or digits.model(0)
    composer = composer or lossrag.wrap(
        model, digits.tasks, policy, shared=model.trunk, seed=0, trace=trace
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    records = []
    for i in range(start, start + steps):
        x, y = digits.batch(i)
        opt.zero_grad()
        records.append(composer.backward(model(x), y))
        opt.step()
    return model, composer, records


def test_lossrag_trains_and_records_retrieval(digits, tmp_path):
    trace = tmp_path / "run.jsonl"
    _, composer, records = _run(digits, LossRAG(refresh_every=5), 21, trace=trace)
    first = records[0]
    retrieved = [t for t in first.terms if not t.active]
    assert retrieved and all(t.score is not None and t.note for t in retrieved)
    assert {t.task for t in retrieved} == {"digit", "parity", "ink"}
    assert set(first.context) == {"digit", "parity", "ink"}
    # every measured feature by name; not cos_query, a slot that is 0 (no query gradient is fed)
    measured = set(TERM_FEATURES) - {"cos_query"}
    assert all(set(features) == measured for features in first.context.values())
    for r in records:
        weights = r.task_weights()
        assert sum(w for w in weights.values() if w is not None) == pytest.approx(3.0)
        assert all(math.isfinite(v) for v in r.losses.values())
    assert [r.step for r in records if r.context] == [0, 5, 10, 15, 20]
    # non-refresh steps list only the active terms, weights held
    assert records[3].task_weights() == records[4].task_weights()
    assert len(read_trace(trace)) == 21
    composer.close()


def test_lossrag_grad_matches_the_weighted_scaled_sum(digits):
    model = digits.model(0)
    composer = lossrag.wrap(model, digits.tasks, LossRAG(), shared=model.trunk, seed=0)
    x, y = digits.batch(0)
    record = composer.backward(model(x), y)
    got = [p.grad.clone() for p in model.parameters()]
    policy = composer.method
    model.zero_grad()
    out = model(x)
    keys = [TermKey(t.task, t.loss) for t in record.terms if t.active]
    scales = policy.tracker.scales(keys)  # |EMA L|, bounded (issue 12)
    assert scales == [abs(policy.tracker.ema[k]) for k in keys]  # at the first step: |L|
    assert policy.multipliers == {
        k: policy.weights[k] / s for k, s in zip(keys, scales, strict=True)
    }
    total = sum(
        policy.multipliers[TermKey(t.task, t.loss)]
        * lossrag.registry.create(t.loss)(out[t.task], y[t.task]).mean()
        for t in record.terms
        if t.active
    )
    total.backward()
    for g, p in zip(got, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


def test_resume_is_bit_for_bit(digits):
    model, composer, _ = _run(digits, LossRAG(refresh_every=4, retrieve_every=2), 10)
    state = copy.deepcopy(composer.state_dict())
    weights = copy.deepcopy(model.state_dict())
    _, _, straight = _run(digits, None, 12, model=model, composer=composer, start=10)
    fresh = digits.model(1)
    fresh.load_state_dict(weights)
    again = lossrag.wrap(
        fresh, digits.tasks, LossRAG(refresh_every=4, retrieve_every=2), shared=fresh.trunk
    )
    buffer = __import__("io").BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    _, _, resumed = _run(digits, None, 12, model=fresh, composer=again, start=10)
    for a, b in zip(straight, resumed, strict=True):
        assert a.losses == b.losses
        assert [(t.loss, t.weight, t.active, t.score) for t in a.terms] == [
            (t.loss, t.weight, t.active, t.score) for t in b.terms
        ]


def test_a_task_whose_terms_are_all_gated_off_keeps_its_natural_loss(digits):
    _, composer, _ = _run(digits, LossRAG(patience=1), 1)
    policy = composer.method
    other = next(c.entry for c in policy.candidates["ink"] if c.entry != "l2")
    policy.active["ink"] = [other]  # as if the natural loss had been switched off earlier
    policy.candidates["ink"] = [c for c in policy.candidates["ink"] if c.entry in ("l2", other)]
    scores = []
    for name, cands in policy.candidates.items():
        scores += [-5.0 if (name, c.entry) == ("ink", other) else 0.0 for c in cands]
    policy.gates.count.clear()
    terms = policy._update(scores)
    assert policy.active["ink"] == ["l2"]
    notes = {t.loss: t.note for t in terms if t.task == "ink"}
    assert notes[other].startswith("off:") and notes["l2"].startswith("on: floor")


def test_non_finite_statistics_keep_the_last_weights(digits, monkeypatch):
    model, composer, _ = _run(digits, LossRAG(refresh_every=2), 3)
    before = dict(composer.method.weights)

    def broken(*args, **kwargs):
        raise FloatingPointError("non-finite context")

    monkeypatch.setattr(composer.method, "_context", broken)
    _, _, records = _run(digits, None, 2, model=model, composer=composer, start=3)
    assert "refresh skipped (non-finite context)" in (records[1].reason or "")
    assert not records[1].skipped
    assert composer.method.weights == before


def test_extreme_losses_give_finite_weights(digits):
    model = digits.model(0)
    composer = lossrag.wrap(model, digits.tasks, LossRAG(refresh_every=1), shared=model.trunk)
    for scale in (1e-6, 1e6, 1e12):
        x, y = digits.batch(0)
        y = dict(y, ink=y["ink"] * scale)
        model.zero_grad()
        record = composer.backward(model(x), y)
        assert not record.skipped
        assert all(math.isfinite(t.weight) for t in record.terms if t.weight is not None)
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_bad_input_is_refused(digits, only_regression):
    model = digits.model(0)
    with pytest.raises(ValueError, match="Task 'digit': the loss library has no loss"):
        lossrag.wrap(model, digits.tasks, LossRAG(index=only_regression), shared=model.trunk)
    with pytest.raises(ValueError, match="'lossrag' reads its retrieval context from its output"):
        lossrag.wrap(model, digits.tasks, "lossrag")
    with pytest.raises(ValueError, match="refresh_every must be >= 1"):
        LossRAG(refresh_every=0)
    with pytest.raises(ValueError, match="floor"):
        LossRAG(floor=1.0)


def test_inspect_shows_mean_weights_and_gates(digits, tmp_path):
    trace = tmp_path / "run.jsonl"
    _, composer, _ = _run(digits, LossRAG(refresh_every=3), 9, trace=trace)
    composer.close()
    result = CliRunner().invoke(
        app, ["inspect", str(trace), "--plot", str(tmp_path / "w.png")], env={"COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    assert "mean w" in result.output and "active at the end" in result.output
    assert (tmp_path / "w.png").stat().st_size > 10_000
    # three panels: the weights, the effective multipliers (the policy divides by the losses'
    # scales, so the weights alone can mislead), the gates; EW's plot has the weights alone
    from matplotlib.image import imread

    from lossrag.plots import plot_weights

    records = lossrag.read_trace(trace)
    ew = [
        r.model_copy(
            update={
                "terms": [
                    t.model_copy(update={"multiplier": t.weight}) for t in r.terms if t.note is None
                ]
            }
        )
        for r in records
    ]
    tall, short = (
        imread(plot_weights(records, tmp_path / "p.png")),
        imread(plot_weights(ew, tmp_path / "e.png")),
    )
    assert tall.shape[0] > 1.7 * short.shape[0]  # 9.5 inches high against 4.5
    step = CliRunner().invoke(app, ["inspect", str(trace), "--step", "0"], env={"COLUMNS": "160"})
    assert "not counted" in step.output and "explore" in step.output


def test_policy_is_reachable_by_name(digits):
    model = digits.model(0)
    composer = lossrag.wrap(model, digits.tasks, "lossrag", shared=model.trunk)
    assert isinstance(composer.method, LossRAG)
    assert "lossrag" in lossrag.weighting.available()
    assert np.isfinite(composer.method.index.vectors).all()


@pytest.mark.slow
def test_untrained_prior_damps_the_junk_tasks_of_mnist1d_noisy(tmp_path):
    """Issue 4's check: over a whole run, every junk task gets a lower mean weight than every
    clean task (about 15 s)."""
    from lossrag.bench.fit import fit
    from lossrag.bench.problems import get_problem
    from lossrag.inspect import mean_weights

    trace = tmp_path / "noisy.jsonl"
    fit(get_problem("mnist1d-noisy"), LossRAG(), seed=0, trace=trace)
    means = mean_weights(read_trace(trace))
    junk = {"class_noisy", "shift_noisy", "noise"}
    clean = set(means) - junk
    assert max(means[t] for t in junk) < min(means[t] for t in clean), means


class _Eager(Prior):
    """A prior under which every candidate beats its task's natural loss (clean targets give
    the shipped prior no reason to switch)."""

    def candidate_score(self, *args: object, **kwargs: object) -> float:
        return 1.0


def test_retrieval_backs_off_while_the_gates_are_quiet(digits):
    def retrievals(policy, steps=16):
        _, composer, records = _run(digits, policy, steps)
        return [r.step for r in records if any(not t.active for t in r.terms)], composer

    # no candidate can beat a natural loss: nothing moves, the interval doubles up to 1·4
    quiet = Prior(switch_cost=100.0)
    policy = LossRAG(refresh_every=1, retrieve_every=1, retrieve_backoff=4, prior=quiet)
    steps, composer = retrievals(policy)
    assert steps == [0, 1, 3, 7, 11, 15]
    state = composer.method.state_dict()
    assert state["retrieval"][:3] == [19, 4, False]
    fixed = LossRAG(refresh_every=1, retrieve_every=1, retrieve_backoff=1, prior=quiet)
    assert retrievals(fixed)[0] == list(range(16))
    # candidates that beat the natural loss move the gates: the interval stays at retrieve_every
    # while they do (quiet gates would give 0, 2, 6, 14)
    moving = LossRAG(refresh_every=1, retrieve_every=2, retrieve_backoff=4, prior=_Eager())
    assert retrievals(moving)[0][:5] == [0, 2, 4, 6, 8]


def test_a_robust_regression_loss_takes_its_units_from_a_batch_with_a_spread():
    """Huber and the other non-homogeneous losses see targets in their standard deviation's
    units; a first batch of one sample (or of equal targets) has none, so it is not taken
    (a NaN std switched the loss off as non-finite before), and the next batch's is."""
    from lossrag.index import default_index
    from lossrag.policy.terms import TermLosses

    entry = next(e for e in default_index().entries if e.name == "huber")
    terms = TermLosses()
    terms.entries[entry.id] = entry
    task = lossrag.Task("y", kind="regression")
    for target in (torch.tensor([3.0]), torch.tensor([2.0, 2.0])):
        value = terms.loss(task, entry.id, {"y": target + 1}, {"y": target}, None)
        assert math.isfinite(float(value)) and task.name not in terms.target_scale
    terms.loss(task, entry.id, {"y": torch.zeros(3)}, {"y": torch.tensor([1.0, 2.0, 3.0])}, None)
    assert terms.target_scale == {"y": pytest.approx(1.0)}


def test_records_tell_trained_policies_apart(digits, tmp_path):
    """A run's records carry the version of the trained policy behind it, its ``policy.json``'s
    checksum: two policies trained by the same code differ (they carried the code's
    fingerprint, the same for both, found by a user trial), and the shipped policy has one
    under both its names."""
    from lossrag.policy.store import save_policy

    def version(policy) -> str | None:
        model = digits.model(0)
        composer = lossrag.wrap(model, digits.tasks, policy, shared=model.trunk)
        x, y = digits.batch(0)
        composer.backward(model(x), y)
        return composer.last_record.version

    for name, temperature in (("a", 1.0), ("b", 2.0)):
        save_policy(LossRAG(temperature=temperature), tmp_path / name, code="same code")
    a, b = version(tmp_path / "a"), version(tmp_path / "b")
    assert a and b and a != b
    assert version("default") == version("lossrag-default") is not None
    assert version("ew") is None
