"""Bad input gets a clear error naming what is wrong, and the composer stays usable."""

from __future__ import annotations

import copy
import json
import math
import shutil
import warnings
from typing import Any

import pytest
import torch

import lossrag
from lossrag.compose import NonFiniteLossError
from lossrag.weighting import make_method


def _same(a: Any, b: Any) -> bool:
    """Exact, recursive equality of two state dicts."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _ok_step(composer, model, digits):
    x, y = digits.batch(0)
    record = composer.backward(model(x), y)
    assert not record.skipped
    return record


def test_unknown_policy_suggests(digits):
    model = digits.model()
    with pytest.raises(ValueError, match="Did you mean 'famo'"):
        lossrag.wrap(model, digits.tasks, "fam")
    with pytest.raises(ValueError, match="Did you mean 'pcgrad'"):
        lossrag.wrap(model, digits.tasks, "pcgard", shared=model.trunk)
    with pytest.raises(ValueError, match="Did you mean 'default'"):  # a shipped policy too
        lossrag.wrap(model, digits.tasks, "defualt", shared=model.trunk)


def test_a_mistyped_policy_folder_is_suggested_and_a_work_folder_named(
    digits, tmp_path, monkeypatch
):
    """A policy folder of the working directory is among the suggestions; a ``lossrag train``
    work folder given as a policy says where its policy went (found by a user trial)."""
    from lossrag.policy.store import policy_folder

    shutil.copytree(policy_folder("default"), tmp_path / "tiny")
    work = tmp_path / "lossrag-train" / "tiny"
    work.mkdir(parents=True)
    (work / "checkpoint.json").write_text(json.dumps({"out": str(tmp_path / "tiny")}))
    monkeypatch.chdir(tmp_path)
    model = digits.model()
    with pytest.raises(
        ValueError, match=r"nor a folder here\. Did you mean 'tiny'\?.*folders here: tiny\."
    ):
        lossrag.wrap(model, digits.tasks, "tny")
    with pytest.raises(
        FileNotFoundError, match=r"work folder \(checkpoints, log, plot\) writing .*tiny\.$"
    ):
        lossrag.wrap(model, digits.tasks, "lossrag-train/tiny")
    with pytest.raises(FileNotFoundError, match=r"nor a shipped policy .* Did you mean 'tiny'\?"):
        lossrag.policy.load_policy("tny")
    # a folder named like a method: the name is the method's, and wrap says how to get the folder
    shutil.copytree(policy_folder("default"), tmp_path / "famo")
    with pytest.warns(UserWarning, match=r"'famo' is the method .* pass './famo' or a pathlib"):
        assert lossrag.wrap(model, digits.tasks, "famo").policy_name == "famo"


def test_default_policy_loads_or_says_it_is_missing(digits):
    from lossrag.policy.store import shipped_policies

    if any(p.name == "default" for p in shipped_policies()):
        model = digits.model()
        assert lossrag.wrap(model, digits.tasks, "default", shared=model.trunk).policy_name
    else:
        with pytest.raises(FileNotFoundError, match="neither a folder nor a shipped policy"):
            lossrag.wrap(digits.model(), digits.tasks, "default")


def test_unknown_loss_suggests():
    with pytest.raises(ValueError, match="Did you mean 'huber'"):
        lossrag.Task("y", kind="regression", loss="hubr")


def test_loss_for_wrong_kind():
    with pytest.raises(ValueError, match="does not apply to regression"):
        lossrag.Task("y", kind="regression", loss="ce")


def test_task_definition_errors():
    with pytest.raises(ValueError, match="num_classes"):
        lossrag.Task("c", kind="classification")
    with pytest.raises(ValueError, match="unknown kind"):
        lossrag.Task("c", kind="ranking")
    with pytest.raises(ValueError, match="metric 'accuracy'"):
        lossrag.Task("r", kind="regression", metric="accuracy")


def test_duplicate_tasks(digits):
    with pytest.raises(ValueError, match="repeated: digit"):
        lossrag.wrap(digits.model(), [*digits.tasks, digits.tasks[0]], "ew")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o, y: o.pop("ink"), "outputs missing task"),
        (lambda o, y: y.pop("digit"), "targets missing task"),
        (lambda o, y: y.__setitem__("extra", y["ink"]), "unknown key"),
        (lambda o, y: o.__setitem__("digit", o["digit"][:, :9]), r"expected logits \(B, 10\)"),
        (lambda o, y: y.__setitem__("digit", y["digit"].float()), "integer class indices"),
        (lambda o, y: y.__setitem__("digit", y["digit"] + 10), r"must lie in \[0, 10\)"),
        (lambda o, y: y.__setitem__("ink", y["ink"][:, None]), "does not match output shape"),
        (lambda o, y: y.__setitem__("ink", y["ink"].long()), "float target"),
        (  # an empty batch was a skipped step, "non-finite loss in digit:ce, ..."
            lambda o, y: [d.__setitem__(k, v[:0]) for d in (o, y) for k, v in list(d.items())],
            r"Task 'digit': the batch holds no samples",
        ),
    ],
)
def test_bad_batch_raises_and_composer_survives(digits, mutate, message):
    model = digits.model()
    composer = lossrag.wrap(model, digits.tasks, "uw")
    state = copy.deepcopy(composer.state_dict())  # state_dict holds live tensors
    x, y = digits.batch(0)
    outputs, y = model(x), dict(y)
    mutate(outputs, y)
    with pytest.raises((ValueError, TypeError), match=message):
        composer.backward(outputs, y)
    assert composer.step == 0
    assert torch.equal(
        composer.state_dict()["method"]["scalarizer"]["log_var"],
        state["method"]["scalarizer"]["log_var"],
    )
    _ok_step(composer, model, digits)


def test_error_names_the_task(digits):
    model = digits.model()
    composer = lossrag.wrap(model, digits.tasks, "ew")
    x, y = digits.batch(0)
    y = dict(y, parity=y["parity"] + 5)
    with pytest.raises(ValueError, match="Task 'parity'"):
        composer.backward(model(x), y)


@pytest.mark.parametrize("policy", ["famo", "default"])
def test_loss_checks_target_values_after_the_first_step_for_methods_that_read_back(digits, policy):
    """``composer.loss()`` of a method that reads its losses back checks the targets' values at
    every step, as ``backward()`` does (an index out of range raised a bare ``IndexError``
    under the default policy after step 0, found by a user trial)."""
    model = digits.model()
    composer = lossrag.wrap(model, digits.tasks, policy, shared=model.trunk)
    x, y = digits.batch(0)
    composer.loss(model(x), y).backward()
    with pytest.raises(ValueError, match=r"Task 'digit'.*class indices must lie in \[0, 10\)"):
        composer.loss(model(x), dict(y, digit=torch.full_like(y["digit"], 10)))
    assert composer.step == 1


@pytest.mark.parametrize("policy", ["uw", "famo", "mgda", "gradnorm", "nashmtl"])
def test_nan_loss_skips_without_touching_state(digits, policy):
    model = digits.model()
    composer = lossrag.wrap(model, digits.tasks, policy, shared=model.trunk, max_skips=2)
    _ok_step(composer, model, digits)
    before = copy.deepcopy(composer.state_dict())
    model.zero_grad()
    x, y = digits.batch(1)
    y = dict(y, ink=y["ink"].clone())
    y["ink"][3] = math.nan
    record = composer.backward(model(x), y)
    assert record.skipped and "ink" in (record.reason or "")
    assert all(p.grad is None for p in model.parameters())
    assert all(t.weight is None for t in record.terms)
    after = composer.state_dict()
    assert after["step"] == before["step"] + 1
    assert _same(after["method"], before["method"])
    _ok_step(composer, model, digits)


@pytest.mark.parametrize(
    ("policy", "normalize"), [("ew", True), ("famo", True), ("famo", False), ("rlw", False)]
)
def test_a_skipped_step_takes_nothing_from_its_batch(digits, policy, normalize):
    """A run with a skipped batch (a NaN input: every loss non-finite, the targets finite) ends
    exactly as the run without it. Found by a user trial: the normaliser folded the skipped
    batch's targets into its statistics, FAMO dropped its pending re-evaluation of the step
    before, RLW drew its weights. Only the step count moves (the normaliser observes every
    batch of its first 64)."""

    def run(bad_at: int | None) -> torch.Tensor:
        model = digits.model()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        composer = lossrag.wrap(
            model, digits.tasks, policy, shared=model.trunk, normalize_targets=normalize
        )
        for i in range(6):
            if i == bad_at:
                x, y = digits.batch(9)
                x = x.clone()
                x[0] = math.nan
                opt.zero_grad()
                with pytest.warns(UserWarning, match="skipped"):
                    assert composer.backward(model(x), y).skipped
                opt.step()
            x, y = digits.batch(i)
            opt.zero_grad()
            composer.backward(model(x), y)
            opt.step()
        composer.close()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(run(None), run(3))


@pytest.mark.parametrize("policy", ["rlw", "uw", "famo"])
def test_a_skipped_step_under_a_grad_scaler_takes_nothing_from_its_batch(digits, policy):
    """With a GradScaler the skipped step's gradients are non-finite and the scaler lowers its
    scale; the composer read that drop as its own previous step skipped and rolled the method
    back to before it (RLW's stream, UW's and FAMO's updates; found by a review). Scales are
    powers of 2, so the unscaled gradients, and the run, are the same as without the batch."""

    def run(bad_at: int | None) -> torch.Tensor:
        model = digits.model()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        scaler = torch.amp.GradScaler("cpu")
        composer = lossrag.wrap(model, digits.tasks, policy, shared=model.trunk, scaler=scaler)
        for i in range(6):
            batches = [digits.batch(9), digits.batch(i)] if i == bad_at else [digits.batch(i)]
            for j, (x, y) in enumerate(batches):
                if len(batches) == 2 and j == 0:
                    x = x.clone()
                    x[0] = math.nan
                opt.zero_grad()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    scaler.scale(composer.loss(model(x), y)).backward()
                scaler.step(opt)
                scaler.update()
        composer.close()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(run(None), run(3))


@pytest.mark.parametrize("policy", ["ew", "default"])
def test_a_skip_names_its_tasks_in_the_same_words_for_every_policy(digits, policy):
    """The retrieval policies said ``non-finite loss in ink:l2``, the baselines ``... in
    task(s) ink`` (found by a user trial); the policies add their terms."""
    model = digits.model()
    composer = lossrag.wrap(model, digits.tasks, policy, shared=model.trunk)
    x, y = digits.batch(0)
    bad = dict(y, ink=y["ink"].clone())
    bad["ink"][3] = math.nan
    with pytest.warns(UserWarning, match="skipped"):
        record = composer.backward(model(x), bad)
    assert record.skipped and (record.reason or "").startswith("non-finite loss in task(s) ink")


@pytest.mark.parametrize("policy", ["ew", "rlw", "uw"])
def test_nan_target_through_loss_gives_no_gradient(digits, policy):
    """``composer.loss()`` at a non-finite step gave a zero loss whose backward made NaN
    gradients (``0 · ∂ℓ/∂y`` at a NaN target) and the next ``opt.step()`` a NaN model, for the
    methods that read nothing back (EW, RLW; found by a user trial). On the CPU the step is
    skipped on the host: no gradient at all, counted towards ``max_skips``."""
    model = digits.model()
    composer = lossrag.wrap(model, digits.tasks, policy, shared=model.trunk, max_skips=1)
    x, y = digits.batch(0)
    bad = dict(y, ink=y["ink"].clone())
    bad["ink"][3] = math.nan
    # the first skip is said, naming the task whose targets caused it (a user trial's missing
    # labels as NaN skipped 135 of 300 steps without a word); later ones are only recorded
    with pytest.warns(UserWarning, match=r"step 0 was skipped .*The targets of 'ink' hold NaN"):
        composer.loss(model(x), bad).backward()
    assert all(p.grad is None for p in model.parameters())
    assert composer.last_record.skipped
    composer.loss(model(x), y).backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        composer.loss(model(x), bad).backward()
    with pytest.raises(NonFiniteLossError, match=r"2 consecutive.*non-finite loss in task.*ink"):
        composer.loss(model(x), bad).backward()


def test_the_input_gate_zeroes_the_gradient_of_a_non_finite_loss():
    """Where the skip is decided on the device (an accelerator), the gate stops the NaN that
    the loss's own backward makes from reaching the model; a finite step passes untouched."""
    from lossrag.compose.steps import InputGate

    layer = torch.nn.Linear(3, 1)
    x = torch.randn(8, 3)
    for target, zero in ((torch.full((8, 1), math.nan), True), (torch.zeros(8, 1), False)):
        layer.zero_grad()
        gate = InputGate()
        loss = torch.nn.functional.mse_loss(gate(layer(x)), target)
        gate.finite = torch.isfinite(loss)
        torch.where(gate.finite, loss, 0.0).backward()
        grads = [p.grad for p in layer.parameters()]
        assert all(bool(torch.isfinite(g).all()) for g in grads)
        assert all(bool((g == 0).all()) for g in grads) == zero


def test_the_trace_holds_every_step_up_to_the_skip_error(digits, tmp_path):
    """The records are written ``trace_every`` at a time; a run that dies of too many skips
    has its trace written up to the error (it held nothing, found by a user trial)."""
    model = digits.model()
    trace = tmp_path / "run.jsonl"
    composer = lossrag.wrap(model, digits.tasks, "famo", max_skips=2, trace=trace)
    x, y = digits.batch(0)
    bad = dict(y, ink=torch.full_like(y["ink"], math.nan))
    with pytest.raises(NonFiniteLossError):
        for i in range(10):
            composer.loss(model(x), y if i < 4 else bad).backward()
    assert len(trace.read_text().splitlines()) == 7  # 4 steps, then 3 skipped


def test_shared_must_hold_model_parameters(digits):
    model = digits.model()
    with pytest.raises(ValueError, match="trainable parameters of `model`"):
        lossrag.wrap(model, digits.tasks, "mgda", shared=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="none"):
        lossrag.wrap(model, digits.tasks, "mgda", shared=torch.nn.ReLU())


def test_unwritable_trace(digits, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="cannot be written"):
        lossrag.wrap(digits.model(), digits.tasks, "ew", trace=blocker / "t.jsonl")


def test_state_from_another_configuration_is_refused(digits):
    model = digits.model()
    state = lossrag.wrap(model, digits.tasks, "uw").state_dict()
    with pytest.raises(ValueError, match="policy 'uw'"):
        lossrag.wrap(model, digits.tasks, "ew").load_state_dict(state)
    with pytest.raises(ValueError, match="not a LossRAG composer state"):
        lossrag.wrap(model, digits.tasks, "uw").load_state_dict({"step": 3})


def _negative_nll_batch(digits):
    """A model, tasks and a batch whose ``ink`` loss (a Gaussian NLL at the target:
    log(0.05) + ½log(2π)) is negative."""
    tasks = [
        digits.tasks[0],
        lossrag.Task("ink", kind="regression", loss="gaussian_nll", loss_params={"sigma": 0.05}),
    ]
    model = digits.model()
    x, y = digits.batch(0)
    out = {k: v for k, v in model(x).items() if k != "parity"}
    return model, tasks, out, {"digit": y["digit"], "ink": out["ink"].detach()}


def test_famo_refuses_non_positive_losses_by_name(digits):
    model, tasks, out, targets = _negative_nll_batch(digits)
    composer = lossrag.wrap(model, tasks, "famo")
    with pytest.raises(ValueError, match=r"task\(s\) 'ink' \(-2.08 <= 0\) do not"):
        composer.backward(out, targets)
    assert composer.step == 0 and torch.equal(
        composer.method.scalarizer._w.detach(), torch.zeros(2)
    )


def test_stch_takes_logarithms_only_in_its_nadir_form(digits):
    model, tasks, out, targets = _negative_nll_batch(digits)
    assert not lossrag.wrap(model, tasks, "stch").backward(out, targets).skipped
    composer = lossrag.wrap(model, tasks, make_method("stch", nadir=True, warmup_epochs=0))
    with pytest.raises(ValueError, match=r"task\(s\) 'ink' \(-2.08 <= -1e-20\) do not"):
        composer.backward(out, targets)
    assert composer.step == 0 and composer.method.state_dict()["count"] == 0
    # a loss of exactly 0 (a task fit to float precision) is taken as log(0 + ε), as the
    # authors' code takes it (a user trial's easy task stopped the run)
    model, tasks, out, targets = _negative_nll_batch(digits)
    composer = lossrag.wrap(model, tasks, make_method("stch", nadir=True, warmup_epochs=0))
    certain = 1e4 * torch.nn.functional.one_hot(targets["digit"], 10).float()
    sure = {**out, "digit": 0 * out["digit"] + certain}
    record = composer.backward(sure, {**targets, "ink": out["ink"].detach() + 1.0})
    assert not record.skipped and record.losses["digit"] == 0.0
    for bad in [{"nadir": "yes"}, {"nadir": True, "warmup_epochs": 1.5}]:
        with pytest.raises(TypeError, match=r"STCH: (nadir must be True or False|warmup_epochs)"):
            make_method("stch", **bad)


@pytest.mark.parametrize("policy", ["dwa", "stch-nadir"])
def test_a_method_that_counts_epochs_says_when_none_ended(digits, policy):
    def method(**kw):
        return (
            make_method("stch", nadir=True, **kw)
            if policy == "stch-nadir"
            else make_method(policy, **kw)
        )

    x, y = digits.batch(0)
    for ends, kw, warned in [(False, {}, True), (True, {}, False), (False, {"period": 2}, False)]:
        model = digits.model()
        composer = lossrag.wrap(model, digits.tasks, method(**kw), shared=model.trunk)
        composer.backward(model(x), y)
        if ends:
            composer.epoch_end()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            composer.close()
        said = [str(w.message) for w in caught if "counts epochs" in str(w.message)]
        assert bool(said) == warned, (ends, kw, said)


def test_non_finite_gradient_from_finite_losses_is_skipped(digits):
    model = digits.model()
    composer = lossrag.wrap(model, digits.tasks, "ew")
    x, y = digits.batch(0)
    out = model(x)
    z = model.trunk(x)
    out["ink"] = out["ink"] + 0 * (z.sum() * 0).sqrt()  # value 0, gradient 0 · ∞ = NaN
    record = composer.backward(out, y)
    assert record.skipped and record.reason == "non-finite gradient"
    assert all(p.grad is None for p in model.parameters())
    _ok_step(composer, model, digits)


def test_outputs_without_grad_name_the_task(digits):
    model = digits.model()
    composer = lossrag.wrap(model, digits.tasks, "famo", shared=model.trunk)
    x, y = digits.batch(0)
    with torch.no_grad():
        out = model(x)
    with pytest.raises(ValueError, match=r"Task .digit..*does not require grad"):
        composer.backward(out, y)
    assert composer.step == 0
    _ok_step(composer, model, digits)


def test_failed_wrap_leaves_no_hooks(digits, tmp_path):
    model = digits.model()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError):
        lossrag.wrap(model, digits.tasks, "famo", trace=blocker / "t.jsonl")
    assert not model._forward_pre_hooks and not model.trunk._forward_hooks


def test_parameters_frozen_or_unfrozen_after_wrap(digits):
    model = digits.model()
    composer = lossrag.wrap(model, digits.tasks, "mgda", shared=model.trunk)
    model.trunk[1].weight.requires_grad_(False)
    model.heads["ink"].weight.requires_grad_(False)
    _ok_step(composer, model, digits)
    assert model.trunk[1].weight.grad is None and model.heads["ink"].weight.grad is None
    model.heads["ink"].weight.requires_grad_(True)
    _ok_step(composer, model, digits)
    assert model.heads["ink"].weight.grad is not None


def test_weights_are_computed_in_full_precision_under_autocast(digits):
    model = digits.model()
    composer = lossrag.wrap(model, digits.tasks, "mgda", shared=model.trunk)
    x, y = digits.batch(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        record = composer.backward({k: v.float() for k, v in out.items()}, y)
    w = [t.weight for t in record.terms]
    assert all(v == torch.tensor(v, dtype=torch.float32).item() for v in w)
    assert not all(v == torch.tensor(v, dtype=torch.bfloat16).item() for v in w)


def test_famo_accepts_losses_above_given_lower_bounds(digits):
    from lossrag.weighting import FAMO

    tasks = [
        digits.tasks[0],
        lossrag.Task("ink", kind="regression", loss="gaussian_nll", loss_params={"sigma": 0.05}),
    ]
    model = digits.model()
    composer = lossrag.wrap(model, tasks, FAMO(min_losses=[0.0, -10.0]))
    x, y = digits.batch(0)
    out = {k: v for k, v in model(x).items() if k != "parity"}
    record = composer.backward(out, {"digit": y["digit"], "ink": out["ink"].detach()})
    assert not record.skipped and record.losses["ink"] < 0
    with pytest.raises(ValueError, match="min_losses has 1 values for 2 terms"):
        lossrag.wrap(model, tasks, FAMO(min_losses=[0.0]))
