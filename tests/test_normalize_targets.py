"""``wrap(..., normalize_targets=True)``: PopArt target normalisation for every method, through
the composer (the normaliser itself is tested in ``tests/test_targets.py``)."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

import lossrag
import lossrag.targets as targets_module
from lossrag.meta.hypergrad import Functional
from lossrag.models import MultiTaskMLP

TASKS = [
    lossrag.Task("price", kind="regression", metric="mae"),
    lossrag.Task("tiny", kind="regression", metric="mae"),
    lossrag.Task("label", kind="classification", num_classes=3),
]


def _data(n: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, {
        "price": 1000.0 + 100.0 * torch.tanh(x[:, 0] + x[:, 1]),
        "tiny": 1e-3 * torch.sin(x[:, 2]),
        "label": (x[:, 3] > 0).long() + (x[:, 4] > 0.5).long(),
    }


def _train(policy: str, normalize: bool, steps: int = 300, path: str = "backward"):
    torch.manual_seed(0)
    model = MultiTaskMLP(6, [32], TASKS)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    composer = lossrag.wrap(
        model, TASKS, policy, shared=model.trunk, seed=0, normalize_targets=normalize
    )
    for i in range(steps):
        x, y = _data(64, i)
        opt.zero_grad()
        if path == "loss":
            composer.loss(model(x), y).backward()
        else:
            composer.backward(model(x), y)
        opt.step()
    return model, composer


def _mae(model, task: str) -> float:
    x, y = _data(2000, 10_000)
    with torch.no_grad():
        return float((model(x)[task] - y[task]).abs().mean())


@pytest.mark.parametrize("policy", ["ew", "famo", "lossrag"])
def test_targets_far_from_unit_scale_are_learned(policy):
    """A target around 1000 (spread 72) and one around 1e-3 (spread 7e-4): with normalisation
    every method learns both in 300 steps; EW without it does not reach the offset (measured:
    price MAE 56 against 923, tiny 2e-4 against 2e-2)."""
    model, composer = _train(policy, True)
    record = composer.last_record
    assert record is not None and set(record.targets) == {"price", "tiny"}
    assert abs(record.targets["price"]["mu"] - 1000) < 10
    composer.close()
    assert _mae(model, "price") < 65 and _mae(model, "tiny") < 3e-4
    if policy == "ew":
        plain, _ = _train("ew", False)
        assert _mae(plain, "price") > 5 * _mae(model, "price")


def test_outputs_stay_in_user_units_and_close_leaves_a_plain_model():
    model, composer = _train("ew", True, steps=50, path="loss")
    x, _ = _data(16, 5)
    with torch.no_grad():
        wrapped = model(x)["price"].clone()
    composer.close()
    assert not model.heads["price"]._forward_hooks  # the head is a plain nn.Linear again
    with torch.no_grad():
        torch.testing.assert_close(model(x)["price"], wrapped, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("micro", [1, 2])
def test_a_trained_model_wrapped_again_is_kept_through_accumulation_and_an_early_close(micro):
    """The re-wrapped head stays in user units until the first statistics are folded in: a
    second micro-batch of the first step does not read it as a fresh head (it did: price MAE
    18 -> 73 385), and closing (or a plain state) right after the first step keeps its outputs
    (it folded mu, sigma into the user-unit weights). Both found by a review of the diff."""
    model, composer = _train("ew", True, steps=300)
    composer.close()
    before = _mae(model, "price")
    again = lossrag.wrap(model, TASKS, "ew", seed=1, normalize_targets=True)
    x, y = _data(64, 700)
    with again.accumulate(micro):
        for part in torch.arange(64).chunk(micro):
            again.loss(model(x[part]), {k: v[part] for k, v in y.items()}).backward()
    assert again.normalizer.user_units == {"price", "tiny"}
    plain = MultiTaskMLP(6, [32], TASKS)
    plain.load_state_dict(again.plain_state_dict())
    assert _mae(plain, "price") == pytest.approx(before, rel=1e-4)
    again.close()
    assert _mae(model, "price") == pytest.approx(before, rel=1e-4)


def test_plain_state_dict_is_the_closed_model_without_closing():
    """A best-so-far checkpoint mid-run: ``composer.plain_state_dict()`` loads into a plain
    model that computes what the wrapped one does (``model.state_dict()`` holds the normalised
    heads: price MAE ~1000 in a plain model); the wrapped model is not changed, and closing it
    gives the same state."""
    model, composer = _train("ew", True, steps=50)
    held = {k: v.clone() for k, v in model.state_dict().items()}
    plain = composer.plain_state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, held[k])
    x, _ = _data(16, 5)
    with torch.no_grad():
        wrapped = model(x)["price"]  # (folds the last statistics in: W, b move, outputs do not)
    standalone = MultiTaskMLP(6, [32], TASKS)
    standalone.load_state_dict(plain)
    with torch.no_grad():
        torch.testing.assert_close(standalone(x)["price"], wrapped, rtol=1e-5, atol=1e-3)
    plain = composer.plain_state_dict()
    composer.close()
    for k, v in model.state_dict().items():
        assert torch.equal(v, plain[k]), k


def test_normalised_heads_are_the_located_heads_only():
    """``composer.normalised_heads()`` lists the located heads' weights and biases and nothing
    else (not a buffer that holds NaN, whose equality to itself fails), none without
    normalisation or once closed; ``load_normalised_heads`` puts them back."""
    model, composer = _train("ew", True, steps=5)
    model.register_buffer("missing", torch.full((2,), float("nan")))
    heads = composer.normalised_heads()
    assert heads and all(k.endswith((".weight", ".bias")) for k in heads)
    assert {k.rsplit(".", 1)[0] for k in heads} <= {n for n, _ in model.named_modules()}
    saved = {k: v.clone() for k, v in heads.items()}
    with torch.no_grad():
        for key in heads:
            model.get_parameter(key).zero_()
    composer.load_normalised_heads(saved)
    assert all(torch.equal(model.get_parameter(k), v) for k, v in saved.items())
    composer.close()
    assert composer.normalised_heads() == {}
    assert _train("ew", False, steps=1)[1].normalised_heads() == {}


@pytest.mark.parametrize("policy", ["ew", "default"])
def test_a_trained_model_wrapped_again_keeps_its_outputs(policy):
    """Fine-tuning: a model trained (and closed) wrapped again. Its heads already predict in
    user units, so they are rescaled, not reinterpreted as normalised heads (which turned a
    price MAE of ~3 into ~1000 at the first step, found by a user trial); a fresh head still is
    (the first step's loss is already small)."""
    model, composer = _train("ew", True, steps=300)
    composer.close()
    before = _mae(model, "price")
    again = lossrag.wrap(model, TASKS, policy, shared=model.trunk, seed=1, normalize_targets=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    for i in range(3):
        x, y = _data(64, 500 + i)
        opt.zero_grad()
        record = again.backward(model(x), y)
        opt.step()
        assert record.losses["price"] < 1.0  # the standardised loss of a trained head
    assert again.normalizer.user_units == {"price", "tiny"}
    assert again.normalizer.stats()["price"]["located"] == 1.0
    assert _mae(model, "price") < 1.5 * before
    again.close()
    assert _mae(model, "price") < 1.5 * before
    torch.manual_seed(0)
    plain = MultiTaskMLP(6, [32], TASKS)
    fresh = lossrag.wrap(plain, TASKS, policy, shared=plain.trunk, normalize_targets=True)
    fresh.backward(plain(x), y)
    assert fresh.normalizer.user_units == set()


def test_resume_continues_exactly():
    model, composer = _train("famo", True, steps=20)
    state = copy.deepcopy(composer.state_dict())  # a snapshot, as torch.save would make
    params = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data(64, 20)
    model.zero_grad(set_to_none=True)
    composer.backward(model(x), y)
    expected = [p.grad.clone() for p in model.parameters()]

    torch.manual_seed(0)
    again = MultiTaskMLP(6, [32], TASKS)
    again.load_state_dict(params)
    resumed = lossrag.wrap(again, TASKS, "famo", shared=again.trunk, seed=0, normalize_targets=True)
    resumed.load_state_dict(state)
    resumed.backward(again(x), y)
    for a, b in zip(expected, [p.grad for p in again.parameters()], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("model_first", [True, False])
def test_resuming_with_a_model_saved_after_close_is_refused(model_first):
    """A model saved after ``close()`` holds its heads in user units; resumed with the run's
    state, whose heads are normalised, its outputs were off by ``σ`` and ``μ`` without a word
    (price MAE ~100 times worse, found by a user trial). The first forward after the resume
    says so, whichever was loaded first; a model saved while wrapped resumes as before."""
    model, composer = _train("famo", True, steps=20)
    state = copy.deepcopy(composer.state_dict())
    wrapped = {k: v.clone() for k, v in model.state_dict().items()}
    composer.close()
    closed = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data(64, 20)
    for params, refused in ((closed, True), (wrapped, False)):
        again = MultiTaskMLP(6, [32], TASKS)
        resumed = lossrag.wrap(
            again, TASKS, "famo", shared=again.trunk, seed=0, normalize_targets=True
        )
        if model_first:
            again.load_state_dict(params)
            resumed.load_state_dict(state)
        else:
            resumed.load_state_dict(state)
            again.load_state_dict(params)
        if refused:
            with pytest.raises(ValueError, match=r"head 'heads.price' holds its weights in user"):
                again(x)
        else:
            assert not resumed.backward(again(x), y).skipped


def test_the_first_step_is_already_normalised():
    torch.manual_seed(0)
    model = MultiTaskMLP(6, [32], TASKS)
    composer = lossrag.wrap(model, TASKS, "ew", normalize_targets=True)
    x, y = _data(64, 0)
    composer.backward(model(x), y)
    assert composer.last_record.losses["price"] < 10  # not ~1e6 in the user's units


def _spoiled(seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x, y = _data(64, seed)
    y["price"][5] = float("nan")
    return x, y


def _windows(policy: str, windows: list[list[tuple]], path: str):
    """Train ``windows`` (one optimizer step each: one batch through ``backward``, or
    micro-batches through ``loss`` in ``accumulate``); the records and the loss trackers'
    first levels after each step."""
    torch.manual_seed(0)
    model = MultiTaskMLP(6, [32], TASKS)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    composer = lossrag.wrap(
        model, TASKS, policy, shared=model.trunk, seed=0, normalize_targets=True
    )
    records, levels = [], []
    for window in windows:
        opt.zero_grad()
        if path == "backward":
            (x, y) = window
            composer.backward(model(x), y)
        else:
            with composer.accumulate(len(window)):
                for x, y in window:
                    composer.loss(model(x), y).backward()
        opt.step()
        records.append(composer.last_record)
        tracker = getattr(composer.method, "tracker", None)
        levels.append(None if tracker is None else dict(tracker.first))
    return records, levels


@pytest.mark.parametrize("path", ["backward", "accumulate"])
@pytest.mark.parametrize("policy", ["ew", "default"])
def test_a_skipped_first_step_leaves_the_next_one_as_a_first_step(policy, path):
    """A NaN target in every batch of the first step skips it; the next step starts the target
    statistics (and the policy's loss levels) from its own batches, as a first step does: the
    runs then match a run without that step (it trained the raw targets with μ = 0 and σ = 1, a
    loss of ~1e6 for targets near 1000; found by a user trial)."""
    if path == "backward":
        clean = [_data(64, i) for i in range(3)]
        spoiled = [_spoiled(99), *clean]
    else:
        clean = [[_data(32, 2 * i), _data(32, 2 * i + 1)] for i in range(3)]
        spoiled = [[_spoiled(98), _spoiled(99)], *clean]
    (ran, levels), (again, again_levels) = (_windows(policy, w, path) for w in (clean, spoiled))
    assert again[0].skipped and not any(r.skipped for r in again[1:])
    assert again[0].targets == {}  # no statistics before they started
    for a, b in zip(ran, again[1:], strict=True):
        assert a.losses == pytest.approx(b.losses, rel=1e-5)
        for task, stats in a.targets.items():
            assert stats == pytest.approx(b.targets[task], rel=1e-9)
    assert levels == again_levels[1:]
    assert again[1].losses["price"] < 10


def test_a_nan_in_the_first_micro_batch_starts_the_statistics_at_the_next_one():
    """Inside the first window, a NaN target in its first micro-batch: the statistics start
    from the next micro-batch (the window is skipped), and no later step trains raw targets."""
    windows = [
        [_spoiled(98), _data(32, 99)],
        *([_data(32, 2 * i), _data(32, 2 * i + 1)] for i in range(3)),
    ]
    records, _ = _windows("ew", windows, "accumulate")
    assert records[0].skipped and not any(r.skipped for r in records[1:])
    assert all(r.losses["price"] < 10 for r in records[1:])


def test_online_adaptation_takes_the_candidates_losses_normalised(monkeypatch):
    """With ``query=``, the meta-step's look-ahead takes the candidates' losses as training does,
    on standardised targets (in the user's units the price's L2 is about 1e4 times larger), a
    meta-step's forwards do not change how the step's own outputs are mapped (the training
    losses are those of the raw outputs), and both targets are learned."""
    torch.manual_seed(0)
    model = MultiTaskMLP(6, [32], TASKS)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    composer = lossrag.wrap(
        model,
        TASKS,
        "lossrag-online",
        shared=model.trunk,
        seed=0,
        normalize_targets=True,
        query=[_data(64, 5000 + i) for i in range(400)],
        meta_every=4,
        optimizer=opt,
    )
    mapped: list[bool] = []
    original = targets_module._raw_view

    def raw_view(*args):
        found = original(*args)
        mapped.append(found is not None)
        return found

    monkeypatch.setattr(targets_module, "_raw_view", raw_view)
    utilities = []
    for i in range(300):
        x, y = _data(64, i)
        opt.zero_grad()
        composer.backward(model(x), y)
        opt.step()
        record = composer.last_record
        assert record is not None and not record.skipped
        utilities += [t.utility for t in record.terms if t.utility is not None]
    assert len(utilities) > 100 and all(math.isfinite(u) for u in utilities)
    assert len(mapped) >= 300 and all(mapped)  # every price output mapped to its raw one
    x, y = _data(64, 9999)
    params = {n: p.detach() for n, p in model.named_parameters()}
    with composer.rerunning():
        losses = Functional(model, composer.meta._candidates)(params, (((x,), {}), y))
    assert float(losses.abs().max()) < 10
    composer.close()
    assert _mae(model, "price") < 65 and _mae(model, "tiny") < 3e-4


def test_an_online_run_saved_without_normalisation_resumes_without_it():
    """The shipped policy with ``query=`` normalised no targets before online adaptation took
    normalised targets: a state it saved (none in it) resumes as it started, exactly."""
    query = [_data(64, 5000 + i) for i in range(50)]

    def make(**options):
        torch.manual_seed(0)
        model = MultiTaskMLP(6, [32], TASKS)
        wrapped = lossrag.wrap(
            model, TASKS, "default", shared=model.trunk, seed=0, query=query, **options
        )
        return model, wrapped

    model, before = make(normalize_targets=False)
    for i in range(12):
        x, y = _data(64, i)
        model.zero_grad(set_to_none=True)
        before.backward(model(x), y)
    state = copy.deepcopy(before.state_dict())
    params = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data(64, 99)
    model.zero_grad(set_to_none=True)
    before.backward(model(x), y)
    expected = [p.grad.clone() for p in model.parameters()]

    again, resumed = make()
    again.load_state_dict(params)
    resumed.load_state_dict(state)
    assert resumed.normalizer is None
    resumed.backward(again(x), y)
    for a, b in zip(expected, [p.grad for p in again.parameters()], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_failed_wrap_leaves_the_model_alone():
    torch.manual_seed(0)
    model = MultiTaskMLP(6, [32], TASKS)
    with pytest.raises(ValueError, match="query"):
        lossrag.wrap(model, TASKS, "ew", normalize_targets=True, query=[_data(4, 1)])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_a_state_saved_without_normalisation_is_refused():
    torch.manual_seed(0)
    model = MultiTaskMLP(6, [32], TASKS)
    plain = lossrag.wrap(model, TASKS, "ew")
    normalised = lossrag.wrap(MultiTaskMLP(6, [32], TASKS), TASKS, "ew", normalize_targets=True)
    with pytest.raises(ValueError, match="normalize_targets"):
        normalised.load_state_dict(plain.state_dict())


UNIT = lossrag.Task("unit", kind="regression", metric="mae")


def _train_auto(policy: str, normalize, steps: int, tasks=(*TASKS, UNIT)):
    """``steps`` steps on ``tasks`` (``unit``: a target near standard units)."""
    torch.manual_seed(0)
    model = MultiTaskMLP(6, [32], list(tasks))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    options = {} if normalize is None else {"normalize_targets": normalize}
    composer = lossrag.wrap(model, list(tasks), policy, shared=model.trunk, seed=0, **options)
    for i in range(steps):
        x, y = _data(64, i)
        y["unit"] = torch.tanh(x[:, 5])
        opt.zero_grad()
        composer.backward(model(x), {t.name: y[t.name] for t in tasks})
        opt.step()
    return model, composer


def test_auto_normalises_only_the_targets_far_from_unit_scale():
    """Around 1000 and around 1e-3: normalised; ``tanh`` of a standard normal: left as it is,
    with a note that says why."""
    _, composer = _train_auto("ew", "auto", steps=3)
    assert composer.normalizer.names == ["price", "tiny"]
    assert set(composer.last_record.targets) == {"price", "tiny"}
    assert "standard units" in composer.normalizer.notes["unit"]


def test_auto_with_every_target_near_unit_scale_is_exactly_no_normalisation():
    tasks = (UNIT, TASKS[2])
    plain, _ = _train_auto("famo", False, steps=20, tasks=tasks)
    auto, composer = _train_auto("famo", "auto", steps=20, tasks=tasks)
    assert composer.normalizer.names == []
    for a, b in zip(plain.parameters(), auto.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_shipped_policy_chooses_auto_and_the_user_can_override_it():
    _, default = _train_auto("default", None, steps=2)
    assert default.normalizer is not None and default.normalizer.names == ["price", "tiny"]
    _, off = _train_auto("default", False, steps=2)
    assert off.normalizer is None
    _, ew = _train_auto("ew", None, steps=2)
    assert ew.normalizer is None


def test_auto_resume_keeps_the_chosen_tasks():
    model, composer = _train_auto("ew", "auto", steps=5)
    state = copy.deepcopy(composer.state_dict())
    tasks = [*TASKS, UNIT]
    again = MultiTaskMLP(6, [32], tasks)
    again.load_state_dict(model.state_dict())
    resumed = lossrag.wrap(again, tasks, "ew", seed=0, normalize_targets="auto")
    resumed.load_state_dict(state)
    assert resumed.normalizer.names == ["price", "tiny"] and not resumed.normalizer.choosing


def test_statistics_take_in_every_batch_then_one_in_every_and_resume_exactly():
    """Every batch before ``warmup`` (64 steps), one in ``every`` (16) after; a run resumed past
    the warmup, across a step that folds statistics in, matches the uninterrupted one bit for
    bit."""
    model, composer = _train("famo", True, steps=80)
    assert composer.normalizer is not None
    stats = composer.normalizer.state_dict()["tasks"]["price"]
    assert float(stats["count"]) == 64 * (64 + 1)  # steps 0-63 and 64 (80 not applied yet)
    snapshot = copy.deepcopy((composer.state_dict(), model.state_dict()))

    def more(model, composer, opt):
        for i in range(80, 100):
            x, y = _data(64, i)
            opt.zero_grad()
            composer.backward(model(x), y)
            opt.step()
        return {k: v.clone() for k, v in model.state_dict().items()}

    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    straight = more(model, composer, opt)
    count = float(composer.normalizer.state_dict()["tasks"]["price"]["count"])
    assert count == 64 * (64 + 3)  # and steps 80 and 96
    again = MultiTaskMLP(6, [32], TASKS)
    again.load_state_dict(snapshot[1])
    resumed = lossrag.wrap(again, TASKS, "famo", shared=again.trunk, seed=0, normalize_targets=True)
    resumed.load_state_dict(snapshot[0])
    after = more(again, resumed, torch.optim.SGD(again.parameters(), lr=1e-3))
    for key, value in straight.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0)


def test_a_compiled_graph_without_the_hooks_is_said_and_reset_fixes_it():
    """``torch.compile`` reuses a graph compiled for the same model class before the
    normaliser's hooks existed (it does not recompile for hooks): the heads go unseen. That is
    said, with the remedy, instead of passing silently (found by a user trial)."""
    torch._dynamo.reset()
    x, y = _data(64, 0)
    for normalize in (False, True):
        torch.manual_seed(0)
        model = MultiTaskMLP(6, [32], TASKS)
        compiled = torch.compile(model, backend="aot_eager")
        composer = lossrag.wrap(compiled, TASKS, "ew", normalize_targets=normalize)
        if normalize:
            with pytest.warns(UserWarning, match=r"torch\._dynamo\.reset\(\)"):
                composer.backward(compiled(x), y)
            assert not composer.normalizer.heads
        else:
            composer.backward(compiled(x), y)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = MultiTaskMLP(6, [32], TASKS)
    compiled = torch.compile(model, backend="aot_eager")
    composer = lossrag.wrap(compiled, TASKS, "ew", normalize_targets=True)
    composer.backward(compiled(x), y)
    assert set(composer.normalizer.heads) == {"price", "tiny"}


def test_targets_far_from_unit_scale_left_raw_are_warned_of_once():
    """A policy that leaves regression targets as they are, ``normalize_targets`` not given:
    one warning per task far from standard units, naming it and the way out; none when the
    user chose (``False``) or the policy normalises (``default``), none for a target near
    unit scale."""
    x, y = _data(64, 0)
    y["near"] = torch.randn(64)
    tasks = [*TASKS, lossrag.Task("near", kind="regression")]

    def first_steps(policy: str, **options) -> list[str]:
        model = MultiTaskMLP(6, [8], tasks)
        composer = lossrag.wrap(model, tasks, policy, shared=model.trunk, **options)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            for _ in range(2):
                composer.loss(model(x), y).backward()
        return [str(w.message) for w in seen if "standard units" in str(w.message)]

    said = first_steps("ew")
    assert len(said) == 2 and "Task 'price'" in said[0] and "(first batch: mean 1009" in said[0]
    assert "Task 'tiny'" in said[1] and "normalize_targets=True" in said[1]
    assert first_steps("ew", normalize_targets=False) == []
    assert first_steps("default") == []
    # methods that divide each loss by its level: the scale cancels, the size does not; a
    # small target is not warned of
    for scale_free in ("famo", "geometricmean", "lossrag", "curriculum+famo"):
        (said,) = first_steps(scale_free)
        assert "Task 'price'" in said and "so their scale does not weigh" in said, scale_free
    assert "weighs by their scale" in first_steps("go4align")[0]  # its weights keep L's scale
    y["price"][3] = float("nan")  # the scale of the finite targets, not NaN
    assert "(first batch: mean 1008, std 67.77)" in first_steps("ew")[0]
