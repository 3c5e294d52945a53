"""Loss switching from corruption evidence (issue 13): gross errors in a regression task's training
targets, or flipped labels in a classification task's, switch a robust loss on, zero-shot and
without a hand-forced prior; clean targets keep the natural loss."""

from __future__ import annotations

import re

import pytest
import torch

import lossrag
from lossrag.keys import TermKey
from lossrag.losses import registry
from lossrag.models import MultiTaskMLP
from lossrag.policy import load_policy
from lossrag.policy.evidence import (
    corruption,
    gradient_shares,
    gross_mask,
    metric_aligned,
    mislabel_mask,
)
from lossrag.policy.gates import Gates
from lossrag.policy.rescue import REDESCENDING, seen_share
from lossrag.policy.weights import weights

TASKS = [
    lossrag.Task("dirty", kind="regression", metric="mae"),
    lossrag.Task("clean", kind="regression", metric="mae"),
]


def _data(n: int, seed: int, outliers: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Two smooth regressions of 8 inputs; ``outliers`` of the ``dirty`` targets get a one-sided
    gross error of 10 standard deviations times ``|z|``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.Generator().manual_seed(99)
    a, b = torch.randn(8, generator=w), torch.randn(8, generator=w)
    x = torch.randn(n, 8, generator=g)
    dirty = torch.tanh(x @ a / 2) * 2
    hit = torch.rand(n, generator=g) < outliers
    dirty = dirty + hit * 10 * dirty.std() * torch.randn(n, generator=g).abs()
    return x, {"dirty": dirty, "clean": torch.sin(x @ b / 3)}


def _train(policy, outliers: float, steps: int = 500, trace=None, **options):
    torch.manual_seed(0)
    model = MultiTaskMLP(8, [64], TASKS)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    if options.get("query") is not None:
        options["optimizer"] = opt
    composer = lossrag.wrap(
        model, TASKS, policy, shared=model.trunk, seed=0, trace=trace, **options
    )
    for i in range(steps):
        x, y = _data(128, i, outliers)
        opt.zero_grad()
        composer.backward(model(x), y)
        opt.step()
    composer.close()
    x, y = _data(4000, 10_000, 0.0)  # a clean test set
    with torch.no_grad():
        out = model(x)
    return composer, {t: float((out[t] - y[t]).abs().mean()) for t in y}


def test_gross_errors_are_flagged_and_heavy_tails_are_not():
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(2000, generator=g)
    heavy = torch.distributions.StudentT(5.0).sample((2000,))
    dirty = clean.clone()
    dirty[:200] += 10 * (1 + torch.rand(200, generator=g))
    zero = torch.zeros(2000)
    assert float(gross_mask(clean, zero).float().mean()) == 0.0
    assert float(gross_mask(heavy, zero).float().mean()) < 0.01
    assert float(gross_mask(dirty, zero).float().mean()) == pytest.approx(0.1, abs=0.005)


def test_flipped_labels_are_flagged_and_confused_or_rare_labels_are_not():
    """A model sure of class 0 (p 0.6, then classes 1, 2, ... in decreasing order): a label it
    ranks second (a confusion) is not flagged, one it ranks last (a flip) is, unless that label
    is a rare class of the batch or the model is not yet sure of anything."""
    logits = torch.linspace(0, -4, 10).repeat(100, 1)
    logits[:, 0] = 2.0
    labels = torch.arange(10).repeat(10)
    labels[80:90] = 1  # confused with the top class
    labels[90:] = 9  # flipped; classes 1 and 9 are now counted, the others rare (8 of 100)
    mask, counted = mislabel_mask(logits, labels)
    assert counted.sum() == 36 and not mask[80:90].any() and mask[90:].all()
    assert int(mask.sum()) == 18  # class 9 among the first 80 too; not 5-8 (rare)
    found = corruption("classification", logits, labels)
    assert found is not None and found.factor == pytest.approx(2 / 0.36)  # 36 of 100 counted
    assert found.share == 1.0  # 2 · 18 / 36, capped
    assert not bool(mislabel_mask(torch.zeros(100, 10), labels)[0].any())  # sure of nothing
    assert corruption("classification", torch.zeros(100, 2), labels % 2) is None
    assert corruption("multilabel", torch.zeros(100, 10), labels) is None


def test_a_robust_loss_draws_less_gradient_from_gross_errors():
    target = torch.zeros(1000)
    target[:100] = 20.0
    out = torch.randn(1000).requires_grad_()
    mask = gross_mask(out, target)
    losses = [registry.create(name) for name in ("l2", "l1")]
    l2, l1 = gradient_shares(losses, out, target, mask)
    assert l2 is not None and l2 > 0.6 and l1 == pytest.approx(0.1, abs=0.01)
    assert gradient_shares(losses, out, target, torch.zeros_like(mask)) == [0.0, 0.0]


def test_asymmetric_losses_do_not_serve_a_regression_metric():
    assert not metric_aligned("regression", registry.create("pinball", tau=0.05))
    for name in ("l2", "l1", "huber", "cauchy", "pinball"):
        assert metric_aligned("regression", registry.create(name))


def test_gates_switch_on_strong_evidence_at_once_and_weak_evidence_slowly():
    gates = Gates(patience=3, patience_on=1, spread=1.0)
    strong, weak = TermKey("t", "tukey"), TermKey("t", "huber")
    assert gates.update(strong, 3.0, active=False)[0]
    states = [gates.update(weak, 0.6, active=False)[0] for _ in range(3)]
    assert states == [False, False, True]  # 0.6 > 1/√n first at n = 3
    # an arm keeps its statistics across a switch: one bad utility does not undo the evidence
    assert gates.update(strong, -1.5, active=True) == (True, None)


def test_a_term_switched_off_earns_its_way_back_with_new_evidence():
    """Switched off by a run of negative utilities while its mean is still high, a term does
    not come back on at the next retrieval on its old evidence (found by a user trial)."""
    gates = Gates(patience=3, patience_on=2, spread=1.0)
    key = TermKey("t", "tukey")
    for _ in range(6):
        gates.update(key, 3.0, active=True)
    states = [gates.update(key, -0.5, active=True) for _ in range(3)]
    assert states[-1] == (False, "off: utility < 0 for 3 updates")
    assert gates.evidence[key] == (1, -0.5)  # the mean was 1.83 over 9
    assert gates.update(key, 0.8, active=False) == (False, None)  # came back on here before
    assert gates.held(key, active=False) == "stays off: mean − 1/√n ≤ 0"
    on, why = gates.update(key, 3.0, active=False)
    assert on and why == "on: mean utility 1.10 over 3 updates, lower bound > 0"
    # switched off by its negative mean (the last utility positive): it keeps that mean
    bound = TermKey("t", "l1")
    states = [gates.update(bound, u, active=True)[1] for u in (-3.0, -3.0, 0.5)]
    assert states[-1] == "off: mean utility -1.83 over 3 updates, upper bound < 0"
    assert gates.evidence[bound] == (1, pytest.approx(-11 / 6))
    assert [gates.update(bound, u, active=False)[0] for u in (0.8, 1.5)] == [False, False]


def test_gates_say_why_a_term_did_not_move():
    """Each gate that held gives the rule it has not met yet (the numbers are in the record's
    utility and evidence); one that moved says why it moved."""
    gates = Gates(patience=3, patience_on=2, spread=1.0)
    natural = {"t": "l2"}
    active = {"t": ["l2"]}
    utilities = [
        (TermKey("t", "l2"), 0.0),
        (TermKey("t", "tukey"), 3.0),
        (TermKey("t", "l1"), -1.0),
    ]
    notes, _ = gates.apply(active, natural, utilities, max_terms=2)
    assert notes == {
        TermKey("t", "tukey"): "stays off: 1 of 2 utilities so far",
        TermKey("t", "l1"): "stays off: 1 of 2 utilities so far",
    }  # and the natural loss, its utility not negative, has no note: "active"
    utilities = [
        (TermKey("t", "l2"), -3.0),
        (TermKey("t", "tukey"), 3.0),
        (TermKey("t", "l1"), -1.0),
    ]
    notes, _ = gates.apply(active, natural, utilities, max_terms=3)
    assert notes[TermKey("t", "tukey")].startswith("on: mean utility 3.00 over 2 updates")
    assert notes[TermKey("t", "l1")] == "stays off: mean − 1/√n ≤ 0"
    assert notes[TermKey("t", "l2")] == "stays on: 1 of 3 negative utilities in a row"
    consecutive = Gates(patience=2, patience_on=3)  # spread inf: utilities above the margin
    notes, _ = consecutive.apply({"t": ["l2"]}, natural, [(TermKey("t", "l1"), 1.0)], 2)
    assert notes == {TermKey("t", "l1"): "stays off: 1 of 3 utilities > 0 in a row"}


def test_a_switched_on_loss_spends_its_task_weight_and_takes_none_from_the_others():
    natural = {"a": "l2", "b": "ce"}
    scores = {TermKey("a", "l2"): 0.0, TermKey("a", "tukey"): 5.0, TermKey("b", "ce"): 0.0}
    one = weights(scores, [TermKey("a", "l2"), TermKey("b", "ce")], natural, 0.05, 1.0)
    two = weights(scores, list(scores), natural, 0.05, 1.0)
    assert two[TermKey("b", "ce")] == pytest.approx(one[TermKey("b", "ce")])
    assert two[TermKey("a", "l2")] + two[TermKey("a", "tukey")] == pytest.approx(
        one[TermKey("a", "l2")]
    )


def test_gross_errors_switch_a_robust_loss_on_and_clean_targets_keep_the_natural_one():
    """15 % one-sided gross errors in one task's training targets: the shipped policy (retrievals
    every 80 steps here) switches that task to a robust loss and leaves the clean task on L2;
    the dirty task's clean-test MAE beats EW's. Without the outliers nothing switches."""
    policy = load_policy("default", refresh_every=20)
    composer, mae = _train(policy, 0.15)
    active = composer.method.active
    assert active["clean"] == ["l2"]
    assert any(e != "l2" for e in active["dirty"]), active
    assert composer.method.gross["dirty"] > 0.05 > composer.method.gross["clean"]
    _, ew = _train("ew", 0.15)
    assert mae["dirty"] < 0.7 * ew["dirty"], (mae, ew)

    quiet, _ = _train(load_policy("default", refresh_every=20), 0.0)
    assert quiet.method.active == {"dirty": ["l2"], "clean": ["l2"]}
    # each candidate that stayed off says why: here no evidence above the floor
    held = [t.note for t in quiet.method.candidate_terms() if not t.active]
    floor = quiet.method.prior.floor_of("regression")
    assert all(quiet.method.gross[task] <= floor for task in ("dirty", "clean"))
    assert held and all("stays off: no corruption evidence (share " in n for n in held), held
    assert all(f"≤ floor {floor:.3g})" in n for n in held), held  # 0.0152, not 0.0151691


def test_with_a_query_stream_gross_errors_still_switch_a_robust_loss_on():
    """Online meta-adaptation (a query stream of held-out batches, as corrupted as the training
    ones) leaves the switching to the evidence: the dirty task switches, the clean one stays
    on L2, and the dirty task's clean-test MAE beats EW's."""
    query = [_data(128, 50_000 + i, 0.15) for i in range(8)]
    policy = load_policy("default", refresh_every=20)
    composer, mae = _train(policy, 0.15, query=query, meta_every=10)
    assert composer.meta is not None and composer.method.active["clean"] == ["l2"]
    assert any(e != "l2" for e in composer.method.active["dirty"]), composer.method.active
    _, ew = _train("ew", 0.15)
    assert mae["dirty"] < 0.7 * ew["dirty"], (mae, ew)


def _until_switched():
    """The shipped policy trained on 15 % gross errors until a robust loss is on for the dirty
    task, then that loss made to return NaN: ``(policy, model, opt, composer, step, robust)``."""
    policy, model, opt, composer, step, robust = _switched()
    loss = policy.library.loss

    def broken(task, entry, *args):
        value = loss(task, entry, *args)
        return value * float("nan") if entry == robust else value

    policy.library.loss = broken
    return policy, model, opt, composer, step, robust


def _switched():
    """The shipped policy trained on 15 % gross errors until a robust loss is on for the dirty
    task: ``(policy, model, opt, composer, step, robust)``."""
    torch.manual_seed(0)
    policy = load_policy("default", refresh_every=20)
    model = MultiTaskMLP(8, [64], TASKS)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    composer = lossrag.wrap(model, TASKS, policy, shared=model.trunk, seed=0)
    step = 0
    while policy.active["dirty"] == ["l2"]:
        assert step < 400, "no robust loss switched on"
        x, y = _data(128, step, 0.15)
        opt.zero_grad()
        composer.backward(model(x), y)
        opt.step()
        step += 1
    robust = next(e for e in policy.active["dirty"] if e != "l2")
    return policy, model, opt, composer, step, robust


def test_a_switched_on_loss_that_goes_non_finite_is_switched_off_and_the_step_is_kept():
    """Bad input: once the robust loss is on, make it return NaN. The step trains on without
    it (not skipped, parameters move), the record says why, and it never comes on again."""
    policy, model, opt, composer, step, robust = _until_switched()
    before = [p.detach().clone() for p in model.parameters()]
    x, y = _data(128, step, 0.15)
    opt.zero_grad()
    record = composer.backward(model(x), y)
    opt.step()
    assert not record.skipped
    assert "non-finite" in (record.reason or "") and robust in record.reason
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert robust not in policy.active["dirty"] and policy.active["dirty"]
    for i in range(step + 1, step + 200):  # later retrievals do not bring it back
        x, y = _data(128, i, 0.15)
        opt.zero_grad()
        assert not composer.backward(model(x), y).skipped
        opt.step()
        assert robust not in policy.active["dirty"]
    state = composer.state_dict()
    assert ["dirty", robust] in state["method"]["gates"]["failed"]
    composer.close()


def test_inspect_shows_every_candidate_its_evidence_and_why_its_gate_moved(tmp_path):
    """The trace of a run in which a robust loss switches on: every retrieval lists each
    candidate's utility and the gate's evidence; the switch's note agrees with the evidence it
    was taken on; ``lossrag inspect --candidates`` prints them."""
    from typer.testing import CliRunner

    from lossrag.cli import app
    from lossrag.inspect import retrievals
    from lossrag.record import read_trace

    trace = tmp_path / "run.jsonl"
    composer, _ = _train(load_policy("default", refresh_every=20), 0.15, steps=300, trace=trace)
    listed = retrievals(read_trace(trace))
    assert len(listed) >= 3
    most = composer.method.max_terms
    for r in listed[1:]:  # a candidate without evidence found its task full
        for t in r.terms:
            full = sum(u.active for u in r.terms if u.task == t.task) >= most
            assert t.utility is None or (t.seen or 0) >= 1 or (not t.active and full)
    gated = [t for r in listed[1:] for t in r.terms if t.seen is not None]
    switched = [t for t in gated if (t.note or "").startswith("on:")]
    assert switched, "no gate moved"
    spread, margin = composer.method.gates.spread, composer.method.gates.margin
    for t in switched:
        assert t.mean_utility is not None and t.seen is not None
        assert t.mean_utility - spread / t.seen**0.5 > margin
        assert f"{t.mean_utility:.2f}" in (t.note or "")
    result = CliRunner().invoke(
        app, ["inspect", str(trace), "--candidates"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "candidates at each retrieval" in result.output and switched[0].loss in result.output
    assert "mean/n" in result.output and "mean utility" in result.output  # numbered notes
    assert not re.search(r"(?<![\d.e])-0(?![.\de])", result.output)  # a zero reads 0, not -0


def test_a_task_whose_only_term_goes_non_finite_gets_its_natural_loss_back():
    """The natural loss already off (as the gates do once a robust loss has proved itself),
    the robust one goes non-finite: the task trains on its natural loss in that very step."""
    policy, model, opt, composer, step, robust = _until_switched()
    policy.active["dirty"] = [robust]
    x, y = _data(128, step, 0.15)
    opt.zero_grad()
    record = composer.backward(model(x), y)
    assert not record.skipped and robust in (record.reason or "")
    assert policy.active["dirty"] == ["l2"]
    assert {(t.task, t.loss) for t in record.terms if t.active} >= {("dirty", "l2")}
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    composer.close()


LABEL_TASKS = [
    lossrag.Task("noisy", kind="classification", num_classes=10),
    lossrag.Task("clean", kind="classification", num_classes=10),
]


def _labels(n: int, seed: int, flip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Two 10-class tasks of 16 inputs (the argmax of a random linear map); ``flip`` of the
    ``noisy`` labels are replaced by a uniformly drawn class."""
    g = torch.Generator().manual_seed(seed)
    w = torch.Generator().manual_seed(99)
    a, b = torch.randn(16, 10, generator=w), torch.randn(16, 10, generator=w)
    x = torch.randn(n, 16, generator=g)
    noisy = (x @ a).argmax(1)
    hit = torch.rand(n, generator=g) < flip
    noisy = torch.where(hit, torch.randint(0, 10, (n,), generator=g), noisy)
    return x, {"noisy": noisy, "clean": (x @ b).argmax(1)}


def _train_labels(policy, flip: float, steps: int = 600):
    """Adam on a fixed training set of 2,000 samples (~40 epochs: cross-entropy memorises the
    flipped labels); test accuracy on 4,000 clean samples."""
    torch.manual_seed(0)
    model = MultiTaskMLP(16, [64], LABEL_TASKS)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    composer = lossrag.wrap(model, LABEL_TASKS, policy, shared=model.trunk, seed=0)
    x_train, y_train = _labels(2000, 1, flip)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(0, 2000, (128,), generator=g)
        opt.zero_grad()
        composer.backward(model(x_train[i]), {k: v[i] for k, v in y_train.items()})
        opt.step()
    composer.close()
    x, y = _labels(4000, 10_000, 0.0)
    with torch.no_grad():
        out = model(x)
    return composer, {t: float((out[t].argmax(1) == y[t]).float().mean()) for t in y}


def test_flipped_labels_switch_a_robust_loss_on_and_clean_labels_keep_cross_entropy():
    """40 % flipped labels in one task's training set: the shipped policy switches that task
    to a loss the flipped labels mislead less and leaves the clean task on cross-entropy; the
    noisy task's clean-test accuracy beats EW's (0.79 against 0.72 when written). Without the
    flips nothing switches."""
    composer, acc = _train_labels(load_policy("default", refresh_every=20), 0.4)
    active = composer.method.active
    assert active["clean"] == ["ce"]
    assert "ce" not in active["noisy"], active
    assert composer.method.gross["noisy"] > 0.1 > composer.method.gross["clean"]
    _, ew = _train_labels("ew", 0.4)
    assert acc["noisy"] > ew["noisy"] + 0.04, (acc, ew)

    quiet, _ = _train_labels(load_policy("default", refresh_every=20), 0.0)
    assert quiet.method.active == {"noisy": ["ce"], "clean": ["ce"]}


@pytest.mark.parametrize(("seen", "kept"), [(0.0, True), (0.3, False), (0.9, None)])
def test_a_task_left_with_robust_losses_that_see_a_minority_gets_its_natural_loss_back(seen, kept):
    """The dirty task on redescending losses alone (its natural loss off, as the gates leave it
    once they have proved themselves). At a refresh where they see none of the batch (every
    residual beyond their scale: no gradient again, a user trial's collapse), L2 comes back
    beside the best of them (``max_terms`` kept); where they see a minority (they hold the
    predictions at its mode), L2 comes back in their place; where they see the majority
    (residuals well inside their scale) nothing changes. The records say why."""
    policy, model, opt, composer, step, _ = _switched()
    entries = policy.library.entries
    robust = [e for e in entries if entries[e].name in REDESCENDING][:2]
    assert len(robust) == 2, sorted(e.name for e in entries.values())
    policy.active["dirty"] = list(robust)
    x, y = _data(128, step, 0.0)
    with torch.no_grad():
        out = model(x)["dirty"]
    scale = policy.library.target_scale["dirty"]  # the units the robust losses see
    far = torch.arange(128) >= int(seen * 128)
    y["dirty"] = out + scale * torch.where(far, 100.0, 0.01)  # far beyond / well inside
    while not policy.due(composer.step):
        composer.step += 1
    opt.zero_grad()
    record = composer.backward(model(x), y)
    assert not record.skipped
    notes = {t.loss: t.note for t in record.terms if t.task == "dirty" and t.note}
    if kept is None:
        assert policy.active["dirty"] == robust and not policy.rescues
        return
    active = policy.active["dirty"]
    assert active[-1] == "l2" and len(active) <= policy.max_terms, active
    assert set(active[:-1]) <= set(robust) and bool(active[:-1]) == kept, active
    said = f"on: rescue (the task's robust losses saw {seen:.0%} of the batch; "
    assert notes["l2"] == said + ("it joins them)" if kept else "in their place)"), notes
    assert all(notes[e].startswith("off: rescue") for e in robust if e not in active), notes
    gates = policy.gates
    assert gates.count[TermKey("dirty", "l2")] == 0 and TermKey("dirty", "l2") not in gates.evidence
    composer.close()


def test_seen_share_counts_the_values_a_redescending_loss_still_pulls():
    """``ψ(u)/u ≥ 0.1``: Tukey's biweight sees ``|u| < 0.83·c``, Welsch's ``|u| < 1.52·scale``;
    a ``(B, D)`` output counts each value (the losses take the mean over ``D``)."""
    tukey, welsch = registry.create("tukey", c=1.0), registry.create("welsch", scale=1.0)
    u = torch.tensor([0.5, 0.8, 0.86, 1.4, 1.6, 5.0])
    assert seen_share([tukey], u, torch.zeros(6)) == pytest.approx(2 / 6)
    assert seen_share([welsch], u, torch.zeros(6)) == pytest.approx(4 / 6)
    assert seen_share([tukey, welsch], -u, torch.zeros(6)) == pytest.approx(4 / 6)
    wide = torch.stack([u, u], 1)
    assert seen_share([tukey], wide, torch.zeros(6, 2)) == pytest.approx(2 / 6)
