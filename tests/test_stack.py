"""The training step under the stacks users train with: ``composer.loss`` + ``backward``,
gradient accumulation, autocast, ``GradScaler`` and ``torch.compile``."""

from __future__ import annotations

import copy

import pytest
import torch

import lossrag
from lossrag.weighting import available, make_method

#: Methods that need ``query=`` or a metric source are covered by their own tests.
PLAIN = sorted(
    set(available())
    - {"autolambda", "metaweighting", "lossrag-online", "lossrag-default-online", "perf"}
)
LOSS_BASED = [
    "ew",
    "uw",
    "dwa",
    "famo",
    "rlw",
    "imtll",
    "geometricmean",
    "stch",
    "lossrag",
    "default",
]


def _grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def _run(digits, policy, step, steps=6, **options):
    """Train ``steps`` steps with ``step(composer, model, x, y)`` doing the backward; return the
    per-step gradients and the composer."""
    model = digits.model(0)
    composer = lossrag.wrap(model, digits.tasks, policy, shared=model.trunk, seed=0, **options)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    grads = []
    for i in range(steps):
        x, y = digits.batch(i)
        opt.zero_grad()
        step(composer, model, x, y)
        grads.append(_grads(model).clone())
        opt.step()
    return grads, composer


@pytest.mark.parametrize("policy", LOSS_BASED)
def test_loss_backward_gives_the_methods_gradient(digits, policy):
    """``composer.loss(...).backward()`` and ``composer.backward(...)`` fill the same gradients,
    step after step (the method's state evolves identically)."""
    by_loss, c1 = _run(digits, policy, lambda c, m, x, y: c.loss(m(x), y).backward())
    by_backward, c2 = _run(digits, policy, lambda c, m, x, y: c.backward(m(x), y))
    for a, b in zip(by_loss, by_backward, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    record = c1.last_record
    assert record is not None and record.step == 5
    assert [t.weight for t in record.terms] == [t.weight for t in c2.last_record.terms]


def test_gradient_methods_have_no_single_loss(digits):
    model = digits.model(0)
    composer = lossrag.wrap(model, digits.tasks, "mgda", shared=model.trunk)
    x, y = digits.batch(0)
    with pytest.raises(TypeError, match=r"gradient-based.*composer\.backward"):
        composer.loss(model(x), y)


@pytest.mark.parametrize("policy", ["ew", "uw", "dwa"])
def test_accumulation_gives_the_gradient_of_one_big_batch(digits, policy):
    """Methods whose weights do not depend on this batch's losses: n micro-batches of b give
    the gradient of one batch of n·b, and the same next state."""
    big, _ = _run(digits, policy, lambda c, m, x, y: c.loss(m(x), y).backward(), steps=3)

    def micro(c, m, x, y):
        with c.accumulate(4):
            for k in range(4):
                part = slice(8 * k, 8 * (k + 1))
                c.loss(m(x[part]), {n: v[part] for n, v in y.items()}).backward()

    small, composer = _run(digits, policy, micro, steps=3)
    for a, b in zip(big, small, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert composer.step == 3


def test_famo_updates_once_per_optimizer_step(digits):
    """Inside a window FAMO's state does not move; its update then uses the mean losses of all
    micro-batches, as one big batch would. (Its weights depend on the current losses, so they
    are taken from the first micro-batch: the gradient is close to, not equal to, the big
    batch's; after 3 steps the logits differ by ~3e-3 relative here.)"""
    seen = []

    def micro(c, m, x, y):
        with c.accumulate(4):
            for k in range(4):
                part = slice(8 * k, 8 * (k + 1))
                c.loss(m(x[part]), {n: v[part] for n, v in y.items()}).backward()
                seen.append(copy.deepcopy(c.method.state_dict()))

    _, one_small = _run(digits, "famo", micro, steps=1)
    _, one_big = _run(digits, "famo", lambda c, m, x, y: c.loss(m(x), y).backward(), steps=1)
    torch.testing.assert_close(
        one_small.method.state_dict()["prev"], one_big.method.state_dict()["prev"]
    )
    seen.clear()
    _, small = _run(digits, "famo", micro, steps=3)
    _, big = _run(digits, "famo", lambda c, m, x, y: c.loss(m(x), y).backward(), steps=3)
    for window in range(3):
        states = seen[4 * window : 4 * window + 4]
        assert all(_same(states[0], s) for s in states[1:])
    torch.testing.assert_close(
        small.method.state_dict()["logits"], big.method.state_dict()["logits"], rtol=1e-2, atol=0
    )


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_accumulate_refuses_bad_counts(digits):
    model = digits.model(0)
    composer = lossrag.wrap(model, digits.tasks, "ew")
    for bad in (0, -1, 1.5, True):
        with (
            pytest.raises(ValueError, match="n must be an integer >= 1"),
            composer.accumulate(bad),
        ):
            pass
    assert composer.step == 0


@pytest.mark.parametrize("policy", PLAIN)
def test_bf16_autocast_trains_every_method(digits, policy):
    model = digits.model(0)
    composer = lossrag.wrap(model, digits.tasks, policy, shared=model.trunk, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for i in range(3):
        x, y = digits.batch(i)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = model(x)
        record = composer.backward(outputs, y)
        assert not record.skipped, record.reason
        opt.step()
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_outputs_take_their_losses_in_float32(dtype):
    """Outputs in fp16/bf16 (as a head's output under autocast is) take their losses in
    float32, as ``F.mse_loss`` under autocast does: against targets in the hundreds the fp16
    squared residual overflowed and every step was skipped; bf16 rounded the targets."""
    torch.manual_seed(0)
    tasks = [
        lossrag.Task("mass", kind="regression"),
        lossrag.Task("shape", kind="classification", num_classes=4),
    ]
    composer = lossrag.wrap(torch.nn.Linear(3, 1), tasks, "ew")
    raw = {"mass": 300 * torch.randn(64), "shape": torch.randn(64, 4)}
    out = {k: v.to(dtype).requires_grad_() for k, v in raw.items()}
    y = {"mass": 500 + 0.5 + torch.arange(64.0), "shape": torch.randint(0, 4, (64,))}
    record = composer.backward(out, y)
    assert not record.skipped, record.reason
    expected = torch.nn.functional.mse_loss(out["mass"].float(), y["mass"])
    torch.testing.assert_close(torch.tensor(record.losses["mass"]), expected)
    ce = torch.nn.functional.cross_entropy(out["shape"].float(), y["shape"])
    torch.testing.assert_close(torch.tensor(record.losses["shape"]), ce)


@pytest.mark.parametrize("policy", ["uw", "famo", "default"])
def test_a_step_the_scaler_skips_leaves_the_method_state_unchanged(digits, policy):
    """With fp16-style loss scaling, an overflowing step is skipped by the GradScaler; at the
    next step the composer sees the scale fall and restores the method's state. (The target
    statistics of ``normalize_targets`` keep the skipped batch's targets: they describe the data,
    not a step; so the comparison runs without them.)"""
    model = digits.model(0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14)
    plain = {"normalize_targets": False}
    composer = lossrag.wrap(
        model, digits.tasks, policy, shared=model.trunk, seed=0, scaler=scaler, **plain
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(i, overflow=False):
        x, y = digits.batch(i)
        opt.zero_grad()
        loss = composer.loss(model(x), y)
        scaler.scale(loss * (float("inf") if overflow else 1.0)).backward()
        scaler.step(opt)
        scaler.update()

    step(0)
    params = [p.detach().clone() for p in model.parameters()]
    step(1, overflow=True)  # the scaler skips this optimizer step
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))
    step(2)
    record = composer.last_record
    assert record is not None and "skipped by the GradScaler" in (record.reason or "")
    # the same as a run that never saw step 1
    fresh = digits.model(0)
    ref_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14)
    ref = lossrag.wrap(
        fresh, digits.tasks, policy, shared=fresh.trunk, seed=0, scaler=ref_scaler, **plain
    )
    ref_opt = torch.optim.SGD(fresh.parameters(), lr=0.01)
    for i in (0, 2):
        x, y = digits.batch(i)
        ref_opt.zero_grad()
        ref_scaler.scale(ref.loss(fresh(x), y)).backward()
        ref_scaler.step(ref_opt)
        ref_scaler.update()
    assert _same(ref.method.state_dict(), composer.method.state_dict())
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters(), strict=True)
    )


@pytest.mark.parametrize("method", ["dwa", "stch"])
def test_an_epoch_that_ends_after_a_skipped_step_stays_ended(digits, method):
    """The state a skipped step returns to ends the epoch too: DWA rolls its history, STCH's
    nadir form counts its warm-up (the epoch was lost before, found by a review)."""

    def run(steps, skip):
        model = digits.model(0)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14)
        policy = make_method(
            method, **({"nadir": True, "warmup_epochs": 0} if method == "stch" else {})
        )
        composer = lossrag.wrap(
            model,
            digits.tasks,
            policy,
            shared=model.trunk,
            seed=0,
            scaler=scaler,
            normalize_targets=False,
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for i in steps:
            if i == "end":
                composer.epoch_end()
                continue
            x, y = digits.batch(i)
            opt.zero_grad()
            loss = composer.loss(model(x), y)
            scaler.scale(loss * (float("inf") if i == skip else 1.0)).backward()
            scaler.step(opt)
            scaler.update()
        return composer.method.state_dict()

    skipped = run([0, 1, 2, "end", 3], skip=2)
    assert _same(skipped, run([0, 1, "end", 3], skip=None))
    assert not _same(skipped, run([0, 1, 3], skip=None))


def test_a_state_that_did_not_count_epochs_takes_the_frameworks_count(digits):
    """A composer state saved before epoch ends were counted holds the ends its method saw: a
    framework's catch-up takes its own count instead of replaying them (found by a review)."""
    model = digits.model(0)
    composer = lossrag.wrap(model, digits.tasks, "dwa", shared=model.trunk, seed=0)
    x, y = digits.batch(0)
    composer.backward(model(x), y)
    composer.epoch_end()
    state = composer.state_dict()
    del state["epochs"]
    resumed = lossrag.wrap(model, digits.tasks, "dwa", shared=model.trunk, seed=0)
    resumed.load_state_dict(state)
    ends = []
    resumed.method.epoch_end = lambda: ends.append(resumed.step)  # type: ignore[method-assign]
    assert resumed.epochs is None
    resumed.end_epochs_until(1)
    assert resumed.epochs == 1 and ends == []
    resumed.end_epochs_until(2)  # one more epoch ended before the framework resumed
    assert resumed.epochs == 2 and ends == [1]


def test_scaler_with_a_gradient_method_is_refused(digits):
    model = digits.model(0)
    with pytest.raises(ValueError, match="scaler= works with loss-based methods"):
        lossrag.wrap(
            model, digits.tasks, "mgda", shared=model.trunk, scaler=torch.amp.GradScaler("cpu")
        )


def test_unknown_option_names_the_closest(digits):
    model = digits.model(0)
    with pytest.raises(ValueError, match="meta_every"):
        lossrag.wrap(model, digits.tasks, "ew", meta_evry=3)
    with pytest.raises(ValueError, match="max_skips must be greater than or equal to 0"):
        lossrag.wrap(model, digits.tasks, "ew", max_skips=-1)
    for mode in ("yes", 1, "Auto"):  # pydantic's bool took "yes" and 1 for True
        with pytest.raises(ValueError, match=f"normalize_targets must be .*got {mode!r}"):
            lossrag.wrap(model, digits.tasks, "ew", normalize_targets=mode)
    with pytest.raises(ValueError, match=r"meta_objective must be .*got .mean."):
        lossrag.wrap(model, digits.tasks, "ew", meta_objective="mean")
    for option, value in [
        ("meta_every", 5),  # silently ignored before
        ("meta_objective", "common"),
        ("query_tasks", ["digit"]),
        ("query_objective", "natural"),
    ]:
        with pytest.raises(ValueError, match=f"{option} belongs to learning from a query set"):
            lossrag.wrap(model, digits.tasks, "famo", **{option: value})


@pytest.mark.parametrize(
    "policy", ["ew", "famo", "gradnorm", "mgda", "pcgrad", "nashmtl", "default"]
)
def test_compiled_model_trains_with_every_family(digits, policy):
    """``torch.compile`` (AOTAutograd, the part that owns the backward graph) under loss-based,
    gradient-based, GradNorm and retrieval methods: the compiled run follows the eager one."""
    torch._dynamo.reset()
    eager, _ = _run(digits, policy, lambda c, m, x, y: c.backward(m(x), y), steps=4)
    model = digits.model(0)
    compiled = torch.compile(model, backend="aot_eager")
    composer = lossrag.wrap(compiled, digits.tasks, policy, shared=model.trunk, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for i in range(4):
        x, y = digits.batch(i)
        opt.zero_grad()
        record = composer.backward(compiled(x), y)
        assert not record.skipped, record.reason
        torch.testing.assert_close(_grads(model), eager[i], rtol=1e-4, atol=1e-6)
        opt.step()
    if policy == "default":
        assert composer.method.schedule.last_refresh == 0 and all(
            t.weight is not None for t in composer.last_record.terms
        )


@pytest.mark.parametrize("policy", ["mgda", "default"])
def test_compiled_outputs_of_an_uncompiled_wrap_are_refused(digits, policy):
    """Wrapping the plain model and training on its compiled outputs failed deep in autograd
    ("appears to not have been used in the graph", "donated buffers"); the error now says to
    compile first, and nothing of the step is counted. A method that does not reach into the
    graph (EW) trains as it did."""
    torch._dynamo.reset()
    model = digits.model(0)
    composer = lossrag.wrap(model, digits.tasks, policy, shared=model.trunk, seed=0)
    compiled = torch.compile(model, backend="aot_eager")
    x, y = digits.batch(0)
    with pytest.raises(ValueError, match=r"torch\.compile'd model.*Compile first, then wrap"):
        composer.backward(compiled(x), y)
    assert composer.step == 0
    record = composer.backward(model(x), y)  # the eager model still trains
    assert not record.skipped and composer.step == 1
    plain = lossrag.wrap(model, digits.tasks, "ew", shared=model.trunk, seed=0)
    assert not plain.backward(compiled(x), y).skipped
    in_place = digits.model(0)
    in_place.compile(backend="aot_eager")  # compiled, but not as a wrapper the composer sees
    with pytest.raises(ValueError, match=r"compiled in place .*torch\.compile\(model\)"):
        lossrag.wrap(in_place, digits.tasks, policy, shared=in_place.trunk)
    assert not lossrag.wrap(in_place, digits.tasks, "ew").backward(in_place(x), y).skipped


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["ew", "famo", "gradnorm", "mgda", "default"])
def test_inductor_compiled_model_trains(digits, policy):
    """The default backend (inductor, C++ on CPU; ~45 s for the first compile): every family
    trains a compiled model and the retrieval policy refreshes."""
    torch._dynamo.reset()
    model = digits.model(0)
    compiled = torch.compile(model)
    composer = lossrag.wrap(compiled, digits.tasks, policy, shared=model.trunk, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    records = []
    for i in range(60):
        x, y = digits.batch(i)
        opt.zero_grad()
        records.append(composer.backward(compiled(x), y))
        opt.step()
    assert not any(r.skipped for r in records)
    assert sum(records[-1].losses.values()) < sum(records[0].losses.values())
    if policy == "default":
        assert composer.method.schedule.refreshes >= 2


@pytest.mark.parametrize("policy", ["mgda", "nashmtl", "dbmtl"])
def test_gradient_methods_aggregate_once_per_accumulated_step(digits, policy):
    """Inside ``accumulate(n)`` the micro-batches' per-task gradients are summed and aggregated
    once: the direction of the big batch (Nash-MTL and DB-MTL weigh the heads too)."""
    big, _ = _run(digits, policy, lambda c, m, x, y: c.backward(m(x), y), steps=3)

    def micro(c, m, x, y):
        with c.accumulate(4):
            for k in range(4):
                part = slice(8 * k, 8 * (k + 1))
                c.backward(m(x[part]), {n: v[part] for n, v in y.items()})

    small, composer = _run(digits, policy, micro, steps=3)
    for a, b in zip(big, small, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    record = composer.last_record
    assert record is not None and not record.skipped
    assert policy == "dbmtl" or all(t.weight is not None for t in record.terms)


def _micro_batches(size: int):
    """A step of ``accumulate(32 // size)`` over micro-batches of ``size`` samples."""

    def step(c, m, x, y):
        with c.accumulate(32 // size):
            for k in range(0, 32, size):
                part = slice(k, k + size)
                c.loss(m(x[part]), {n: v[part] for n, v in y.items()}).backward()

    return step


def test_policy_trackers_take_the_windows_mean_losses(digits):
    """A retrieval policy's loss trackers (each term's reference ``L0`` and level) fold in the
    mean losses of an accumulated step's micro-batches, as one big batch would, not the first
    micro-batch's."""
    plain = {"steps": 1, "normalize_targets": False}
    _, big = _run(digits, "default", lambda c, m, x, y: c.loss(m(x), y).backward(), **plain)
    _, small = _run(digits, "default", _micro_batches(8), **plain)
    want, got = big.method.tracker.state_dict(), small.method.tracker.state_dict()
    for name in ("first", "ema", "log_ema", "reference"):
        for task, losses in want[name].items():
            for loss, value in losses.items():
                assert got[name][task][loss] == pytest.approx(value, rel=1e-5), (name, task)


def test_one_sample_micro_batches_keep_sane_multipliers(digits):
    """Micro-batches of one sample and a regression target in the hundreds (normalised): the
    first micro-batch's ``σ`` is 1 and its loss no scale, so the normalised task is not
    divided by a loss scale until a window's mean is known (a multiplier of 50-120 at the first
    step before, which swamped Adam's second moments for hundreds of steps)."""
    raw = dict(digits.y, ink=digits.y["ink"] * 100 + 300)
    digits = type(digits)(digits.x, raw, digits.tasks)
    records = []

    def step(c, m, x, y):
        _micro_batches(1)(c, m, x, y)
        records.append(c.last_record)

    _, composer = _run(digits, "default", step, steps=3)
    multipliers = [t.multiplier for r in records for t in r.terms if t.active]
    assert multipliers and max(multipliers) < 5, multipliers
    reference = composer.method.tracker.state_dict()["reference"]
    assert set(reference) == {"digit", "parity", "ink"}


@pytest.mark.parametrize("policy", ["uw", "lossrag"])
def test_a_non_finite_micro_batch_skips_its_whole_optimizer_step(digits, policy):
    model = digits.model(0)
    composer = lossrag.wrap(model, digits.tasks, policy, shared=model.trunk, seed=0)
    x, y = digits.batch(0)
    composer.loss(model(x), y).backward()
    before = copy.deepcopy(composer.method.state_dict())
    model.zero_grad(set_to_none=True)
    with composer.accumulate(3):
        for k in range(3):
            part = slice(8 * k, 8 * (k + 1))
            yk = {n: v[part].clone() for n, v in y.items()}
            if k == 1:
                yk["ink"][0] = float("nan")
            composer.loss(model(x[part]), yk).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert composer.last_record is not None
    assert composer.last_record.skipped
    reason = composer.last_record.reason or ""  # and why: the later micro-batch's own cause
    assert "later micro-batch" in reason and "non-finite loss in" in reason and "ink" in reason
    if policy == "uw":  # the update taken at the first micro-batch is undone
        assert _same(before, composer.method.state_dict())


def test_a_step_the_composer_skips_leaves_the_scaler_usable(digits):
    """With a GradScaler, a skipped step's zero loss stays on the graph, so ``scaler.step``
    finds its inf checks and skips the optimizer step instead of raising."""
    model = digits.model(0)
    scaler = torch.amp.GradScaler("cpu")
    composer = lossrag.wrap(model, digits.tasks, "uw", shared=model.trunk, scaler=scaler)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = digits.batch(0)
    y = {n: v.clone() for n, v in y.items()}
    y["ink"][0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(composer.loss(model(x), y)).backward()
    scaler.step(opt)
    scaler.update()
    assert composer.last_record is not None and composer.last_record.skipped
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def _traced(digits, policy, steps, after, trace, **options):
    """Train ``steps`` steps with ``composer.loss(...).backward()`` and a trace written every
    ``trace_every`` steps, calling ``after(composer)`` after each; the trace's records."""
    model = digits.model(0)
    composer = lossrag.wrap(
        model, digits.tasks, policy, shared=model.trunk, seed=0, trace=trace, **options
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for i in range(steps):
        x, y = digits.batch(i)
        opt.zero_grad()
        composer.loss(model(x), y).backward()
        opt.step()
        after(composer)
    composer.close()
    return lossrag.read_trace(trace)


def test_policy_records_read_later_show_their_own_step(digits, tmp_path):
    """Records kept pending (the trace is written every ``trace_every`` steps) carry the
    weights and multipliers of their own step, not of the step when they are read; every
    active term has one, at a retrieval step too (it was missing there)."""
    seen = []

    def read(composer):
        seen.append([t.multiplier for t in composer.last_record.terms])

    records = _traced(digits, "default", 8, read, tmp_path / "run.jsonl", trace_every=8)
    written = [[t.multiplier for t in r.terms] for r in records]
    assert written == seen and len({tuple(m) for m in seen}) > 1
    assert all(t.multiplier is not None for r in records for t in r.terms if t.active)


def test_records_read_later_show_their_own_steps_target_statistics(digits, tmp_path):
    """The target statistics of a record written to the trace steps after its own are those
    its step trained with, whether or not ``last_record`` was read in between (they were those
    of the step the trace was written at, found by a user trial)."""
    traces = []
    for read in (False, True):
        live = []

        def after(composer, read=read, live=live):
            if read:  # materialises the record now
                assert composer.last_record.targets
            state = composer.normalizer.state_dict()["tasks"]["ink"]
            live.append((float(state["mu"]), float(state["sigma"])))

        trace = tmp_path / f"run{read}.jsonl"
        records = _traced(digits, "ew", 12, after, trace, normalize_targets=True, trace_every=16)
        traces.append([(r.targets["ink"]["mu"], r.targets["ink"]["sigma"]) for r in records])
        assert traces[-1] == live and len(set(live)) > 1
        # step 0 trained with the first batch's σ: not a fallback (a user trial saw one)
        assert records[0].step == 0 and all(r.targets["ink"]["fallback"] == 0 for r in records)
    assert traces[0] == traces[1]


def test_a_micro_batch_beyond_the_window_is_refused(digits):
    """``accumulate(2)`` fed a third micro-batch: an error naming the window, before anything
    of that micro-batch is counted; the two before it make the optimizer step."""
    model = digits.model(0)
    composer = lossrag.wrap(model, digits.tasks, "uw", shared=model.trunk)
    x, y = digits.batch(0)
    refused = pytest.raises(ValueError, match=r"accumulate\(2\): a micro-batch beyond the 2")
    with refused, composer.accumulate(2):
        for k in range(3):
            part = slice(8 * k, 8 * (k + 1))
            composer.loss(model(x[part]), {n: v[part] for n, v in y.items()}).backward()
    assert composer.step == 1
    with composer.accumulate(2, divide=False):  # a trainer that divides itself: its business
        for k in range(3):
            part = slice(8 * k, 8 * (k + 1))
            composer.loss(model(x[part]), {n: v[part] for n, v in y.items()}).backward()
    assert composer.step == 2
    short = pytest.warns(UserWarning, match=r"divided by 2\. Open accumulate\(1\) for a short")
    with short, composer.accumulate(2):  # a short last window: said, with the way out
        composer.loss(model(x[:8]), {n: v[:8] for n, v in y.items()}).backward()
    assert composer.step == 3


def test_a_task_without_spread_at_first_is_tracked_once_its_sigma_is_known(digits):
    """A normalised regression whose first batch is constant (no σ yet): its loss is not taken
    as its reference ``L0`` until its σ is known (it was the fresh head's 0.01, and through the
    bound cut the other tasks' multipliers 20×), nor after a resume in between."""
    raw = {k: v.clone() for k, v in digits.y.items()}
    raw["ink"] = raw["ink"] * 100 + 300
    raw["ink"][:32] = 500.0  # batch 0
    data = type(digits)(digits.x, raw, digits.tasks)
    seen = []

    def step(c, m, x, y):
        c.loss(m(x), y).backward()
        seen.append(c.method.tracker.state_dict()["reference"].get("ink"))

    _, composer = _run(data, "default", step, steps=4)
    assert composer.normalizer.spreadless == {"ink"}
    assert seen[:2] == [None, None] and seen[2] is not None and 0.3 < seen[2]["l2"] < 3
    multipliers = {t.task: t.multiplier for t in composer.last_record.terms if t.active}
    assert multipliers["digit"] > 0.2 and multipliers["parity"] > 0.5, multipliers
    state = composer.normalizer.state_dict()
    assert state["spreadless"] == ["ink"]


def test_weights_are_retaken_when_the_terms_change_inside_a_window(digits):
    """A gate that swaps one term for another inside an accumulation window (as a refresh at
    its first micro-batch can) keeps the count of terms: the later micro-batches still get
    weights for their own terms (they got the old term's, by position)."""
    from lossrag.keys import TermKey

    model = digits.model(0)
    composer = lossrag.wrap(model, digits.tasks, "default", shared=model.trunk, seed=0)
    policy = composer.method
    for i in range(2):
        x, y = digits.batch(i)
        composer.loss(model(x), y).backward()
    other = next(c.entry for c in policy.candidates["ink"] if c.entry != policy.natural["ink"])
    taken = []
    original = policy.coefficients

    def spy(like, terms):
        taken.append(list(terms))
        return original(like, terms)

    policy.coefficients = spy
    x, y = digits.batch(2)
    with composer.accumulate(2):
        composer.loss(model(x[:16]), {k: v[:16] for k, v in y.items()}).backward()
        policy.active["ink"] = [other]
        policy.tracker.join(TermKey("ink", other), TermKey("ink", policy.natural["ink"]))
        policy._reweigh()
        composer.loss(model(x[16:]), {k: v[16:] for k, v in y.items()}).backward()
    assert len(taken) == 2 and TermKey("ink", other) in taken[1]


@pytest.mark.parametrize("policy", ["mgda", "nashmtl"])
def test_a_short_window_divides_a_gradient_methods_gradients_by_its_length(digits, policy):
    """``accumulate(4)`` fed two micro-batches: every gradient (the aggregated direction, the
    heads', weighted or not) is half that of ``accumulate(2)`` over the same two, as a
    loss-based method's is; the direction was the shared parameters' mean and the heads' sum
    over 4 before."""

    def window(n):
        def step(c, m, x, y):
            with c.accumulate(n):
                for k in range(2):
                    part = slice(8 * k, 8 * (k + 1))
                    c.backward(m(x[part]), {name: v[part] for name, v in y.items()})

        return step

    full, _ = _run(digits, policy, window(2), steps=1)
    with pytest.warns(UserWarning, match=r"saw 2 micro-batches; each loss was divided by 4"):
        short, _ = _run(digits, policy, window(4), steps=1)
    torch.testing.assert_close(short[0], full[0] / 2, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("policy", ["mgda", "uw"])
def test_the_trace_holds_an_accumulated_steps_complete_record(digits, tmp_path, policy):
    """A record is written when its optimizer step's window closes: a gradient method's
    weights (set once the window's gradients are aggregated) were null in the trace, and a
    skip found at a later micro-batch was missing from it."""
    model = digits.model(0)
    trace = tmp_path / "t.jsonl"
    composer = lossrag.wrap(
        model, digits.tasks, policy, shared=model.trunk, seed=0, trace=trace, trace_every=1
    )
    x, y = digits.batch(0)
    for bad in (False, True):
        with composer.accumulate(2):
            for k in range(2):
                part = {n: v[8 * k : 8 * (k + 1)].clone() for n, v in y.items()}
                if bad and k == 1:
                    part["ink"][0] = float("nan")
                out = model(x[8 * k : 8 * (k + 1)])
                if policy == "mgda":
                    composer.backward(out, part)
                else:
                    composer.loss(out, part).backward()
    composer.close()
    good, skipped = lossrag.read_trace(trace)
    assert not good.skipped and all(t.weight is not None for t in good.terms if t.active)
    assert good.task_weights() == pytest.approx({t.task: t.weight for t in good.terms if t.active})
    assert skipped.skipped and "later micro-batch" in (skipped.reason or "")
