"""Issue 12: no term is starved by terms whose loss approaches 0 (bounded loss scales)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lossrag
from lossrag.context import LossTracker
from lossrag.keys import TermKey
from lossrag.policy import LossRAG

EASY, HARD = TermKey("easy", "l2"), TermKey("hard", "ce")
A, B, HINGE = TermKey("a", "l2"), TermKey("b", "l2"), TermKey("a", "hinge")

#: A loss trajectory: a first loss, then per step a log-change (a loss → 0 is a run of large
#: negative changes, a plateau a run of zeros, a spike a large positive one).
_trajectory = st.tuples(
    st.floats(1e-6, 1e6),
    st.lists(st.floats(-3.0, 3.0), min_size=1, max_size=60),
)


def _relative_multipliers(tracker: LossTracker, keys: list[TermKey]) -> list[float]:
    """``L0 / scale`` per term: its multiplier relative to its first loss."""
    return [tracker.reference[k] / s for k, s in zip(keys, tracker.scales(keys), strict=True)]


@settings(max_examples=60, deadline=None)
@given(
    trajectories=st.lists(_trajectory, min_size=2, max_size=5),
    max_ratio=st.sampled_from([1.0, 2.0, 3.0, 10.0]),
    floor=st.sampled_from([0.0, 0.01, 0.3]),
)
def test_relative_multipliers_stay_within_max_ratio(trajectories, max_ratio, floor):
    tracker = LossTracker(floor=floor, max_ratio=max_ratio)
    keys = [TermKey(f"t{i}", "l2") for i in range(len(trajectories))]
    level = {k: first for k, (first, _) in zip(keys, trajectories, strict=True)}
    steps = max(len(changes) for _, changes in trajectories)
    for step in range(steps):
        tracker.update(step, dict(level))
        rel = _relative_multipliers(tracker, keys)
        assert all(math.isfinite(r) and r > 0 for r in rel)
        assert max(rel) / min(rel) <= max_ratio * (1 + 1e-9)
        if floor > 0:
            assert max(rel) <= 1 / floor * (1 + 1e-9)
        for k, (_, changes) in zip(keys, trajectories, strict=True):
            if step < len(changes):
                level[k] = level[k] * math.exp(changes[step])


def test_a_loss_going_to_zero_beside_a_plateau():
    """The case of the issue: one loss decays to 1e-8 of its start, the other plateaus. With
    ``1/EMA L`` the decaying term gets ~1e8 times the multiplier; bounded, at most ``max_ratio``."""
    plain, bounded = LossTracker(), LossTracker(max_ratio=3.0)
    for step in range(400):
        values = {EASY: 2.0 * 0.95**step, HARD: 2.3 if step < 20 else 1.5}
        plain.update(step, values)
        bounded.update(step, values)
    keys = [EASY, HARD]
    ratio = [r[0] / r[1] for r in (_relative_multipliers(t, keys) for t in (plain, bounded))]
    assert ratio[0] > 1e6
    assert ratio[1] == pytest.approx(3.0)
    # the plateauing task keeps the multiplier of its level, the easy one is floored
    assert bounded.scales(keys)[1] == pytest.approx(bounded.scale(HARD))


def test_unbounded_settings_give_the_plain_ema_scale():
    tracker = LossTracker(max_ratio=math.inf)
    for step, v in enumerate([1.0, 0.1, 1e-3, 1e-6]):
        tracker.update(step, {A: v, B: 1.0})
    assert tracker.scales([A, B]) == [tracker.scale(A), tracker.scale(B)]


def test_a_zero_first_loss_takes_the_first_non_zero_one_as_reference():
    tracker = LossTracker(max_ratio=3.0)
    tracker.update(0, {HINGE: 0.0, B: 1.0})
    assert HINGE not in tracker.reference
    assert tracker.scales([HINGE, B]) == [1e-8, 1.0]  # no reference yet: its level
    tracker.update(1, {HINGE: 0.5, B: 1.0})
    assert tracker.reference[HINGE] == 0.5


def test_old_tracker_states_still_load():
    tracker = LossTracker(max_ratio=3.0)
    tracker.update(0, {A: 4.0})
    tracker.update(1, {A: 2.0})
    state = tracker.state_dict()
    del state["reference"]  # a state saved before the bounded scales
    again = LossTracker(max_ratio=3.0)
    again.load_state_dict(state)
    assert again.reference == {A: 4.0}


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="max_ratio"):
        LossTracker(max_ratio=0.5)
    with pytest.raises(ValueError, match="scale_floor"):
        LossRAG(scale_floor=2.0)


def test_policy_records_its_effective_multipliers(digits):
    """``policy.multipliers`` are the gradient weights the step used, with the keys of
    ``policy.weights``, and their relative spread is bounded by ``max_ratio``."""
    model = digits.model(0)
    policy = LossRAG(refresh_every=3, max_ratio=3.0)
    composer = lossrag.wrap(model, digits.tasks, policy, shared=model.trunk, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for i in range(40):
        x, y = digits.batch(i)
        opt.zero_grad()
        composer.backward(model(x), y)
        opt.step()
        assert set(policy.multipliers) == set(policy.weights)
        for key, m in policy.multipliers.items():
            scale = policy.weights[key] / m
            assert scale >= policy.tracker.scale(key) * (1 - 1e-12)
        rel = [
            policy.tracker.reference[k] * m / policy.weights[k]
            for k, m in policy.multipliers.items()
        ]
        assert max(rel) / min(rel) <= 3.0 * (1 + 1e-9)
    terms = policy.terms()
    like = torch.zeros(())
    assert policy.coefficients(like, terms).tolist() == pytest.approx(
        [policy.multipliers[key] for key in terms]
    )
    composer.close()


def test_a_task_whose_natural_loss_is_switched_off_still_bounds_the_others():
    """Task ``a`` plateaus at its first loss while ``b`` falls 1000×, so ``b``'s scale is held at
    a third of its first loss (max_ratio 3). When ``a`` switches its natural loss off for
    another, ``b`` stays bounded by ``a``'s natural level: its multiplier does not jump."""
    policy = LossRAG(max_ratio=3.0)
    policy.bind([lossrag.Task("a", kind="regression"), lossrag.Task("b", kind="regression")])
    for step in range(100):
        policy.tracker.update(step, {A: 1.0, B: 0.9**step})
    like = torch.zeros(())
    policy.weights = {A: 1.0, B: 1.0}
    before = policy.coefficients(like, [A, B]).tolist()
    assert before[1] == pytest.approx(3.0)  # L0 / (L0 / 3)

    robust = TermKey("a", "l1")
    policy.active["a"] = ["l1"]
    policy.tracker.join(robust, A)
    policy.tracker.update(100, {robust: 1.0, B: 0.9**100})
    policy.weights = {robust: 1.0, B: 1.0}
    after = policy.coefficients(like, [robust, B]).tolist()
    assert after[1] == pytest.approx(before[1])


def test_amend_redoes_an_update_with_the_windows_mean():
    """``LossTracker.amend`` turns an update with a first micro-batch's losses into the update
    with the window's mean, leaving a join in place: a joining term keeps its factor even when
    the mean gives it no reference yet (a signed loss whose mean is 0)."""
    old, fresh, joined = TermKey("a", "l2"), TermKey("b", "l2"), TermKey("b", "huber")
    want, got = LossTracker(), LossTracker()
    for tracker in (want, got):
        tracker.update(0, {old: 2.0})
        tracker.join(joined, old)
    keys = [old, fresh, joined]
    before = got.untracked(keys)
    got.update(1, {old: 4.0, fresh: 0.5, joined: 0.3})
    got.amend(1, {old: 4.0, fresh: 0.5, joined: 0.3}, {old: 3.0, fresh: 1.5, joined: 0.0}, before)
    want.update(1, {old: 3.0, fresh: 1.5, joined: 0.0})
    for name, table in want.state_dict().items():
        for task, losses in table.items():
            for loss, value in losses.items():
                assert got.state_dict()[name][task][loss] == pytest.approx(value), name
    assert got.joining == want.joining and joined in got.joining
