"""The composer: every method trains, gradients are exact, state resumes bit-for-bit."""

from __future__ import annotations

import math

import pytest
import torch
from torchjd.aggregation import UPGrad
from torchjd.autojac import jac_to_grad, mtl_backward

import lossrag
from lossrag.models import MultiTaskMLP
from lossrag.weighting import available, method_class

# methods that need a query stream are exercised in test_online.py
ALL = [m for m in available() if not method_class(m).needs_query]
STATEFUL_OR_RANDOM = [
    "uw",
    "imtll",
    "dwa",
    "famo",
    "rlw",
    "gradnorm",
    "nashmtl",
    "gradvac",
    "pcgrad",
    "graddrop",
]


def _train(digits, policy, steps, seed=0, composer_seed=0, **wrap_kw):
    model = digits.model(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    composer = lossrag.wrap(
        model, digits.tasks, policy, shared=model.trunk, seed=composer_seed, **wrap_kw
    )
    records = []
    for i in range(steps):
        x, y = digits.batch(i)
        opt.zero_grad()
        records.append(composer.backward(model(x), y))
        opt.step()
        if i % 4 == 3:
            composer.epoch_end()
    return model, opt, composer, records


def test_every_required_method_is_registered():
    required = {
        "ew",
        "uw",
        "dwa",
        "famo",
        "rlw",
        "gradnorm",
        "mgda",
        "pcgrad",
        "cagrad",
        "nashmtl",
        "imtlg",
        "upgrad",
        "alignedmtl",
        "imtll",
        "geometricmean",
        "stch",
        "dualproj",
        "gradvac",
        "fairgrad",
        "graddrop",
        "config",
    }
    assert required <= set(ALL)


@pytest.mark.parametrize("policy", ALL)
def test_method_trains_digits(digits, policy):
    model, _, _, records = _train(digits, policy, steps=40)
    first, last = records[0], records[-1]
    for r in records:
        assert not r.skipped
        assert all(math.isfinite(v) for v in r.losses.values())
        for t in r.terms:
            assert t.weight is None or math.isfinite(t.weight)
    assert all(math.isfinite(float(p.detach().abs().sum())) for p in model.parameters())
    # training works: the summed loss falls over 40 steps of Adam. PBI is the exception by
    # design: it pulls the loss vector onto its preference ray (equal losses here), so it raises
    # the small regression loss towards the classification ones.
    if policy != "pbi":
        assert sum(last.losses.values()) < sum(first.losses.values())
    assert [t.task for t in first.terms if t.active] == ["digit", "parity", "ink"]


def test_ew_equals_plain_backward(digits):
    """EW's .grad is bit-identical to backward() of the summed task losses, and equal (to float
    rounding) to the usual torch.nn.functional losses."""
    model_a, model_b, model_c = digits.model(1), digits.model(1), digits.model(1)
    x, y = digits.batch(0)
    composer = lossrag.wrap(model_a, digits.tasks, "ew")
    record = composer.backward(model_a(x), y)
    out = model_b(x)
    sum(
        lossrag.registry.create(t.loss)(out[t.name], y[t.name]).mean() for t in digits.tasks
    ).backward()
    out = model_c(x)
    (
        torch.nn.functional.cross_entropy(out["digit"], y["digit"])
        + torch.nn.functional.cross_entropy(out["parity"], y["parity"])
        + torch.nn.functional.mse_loss(out["ink"], y["ink"])
    ).backward()
    for pa, pb, pc in zip(
        model_a.parameters(), model_b.parameters(), model_c.parameters(), strict=True
    ):
        assert torch.equal(pa.grad, pb.grad)
        torch.testing.assert_close(pa.grad, pc.grad)
    assert record.losses["digit"] == pytest.approx(
        float(torch.nn.functional.cross_entropy(out["digit"], y["digit"]).detach())
    )


def test_gradients_accumulate_like_backward(digits):
    model = digits.model(2)
    composer = lossrag.wrap(model, digits.tasks, "mgda", shared=model.trunk)
    x, y = digits.batch(0)
    composer.backward(model(x), y)
    once = [p.grad.clone() for p in model.parameters()]
    composer.backward(model(x), y)
    for p, g in zip(model.parameters(), once, strict=True):
        torch.testing.assert_close(p.grad, 2 * g)


def test_aggregator_matches_torchjd_mtl_backward(digits):
    """UPGrad through the composer == torchjd's own mtl_backward + jac_to_grad pipeline."""
    model_a, model_b = digits.model(3), digits.model(3)
    x, y = digits.batch(1)
    record = lossrag.wrap(model_a, digits.tasks, "upgrad", shared=model_a.trunk).backward(
        model_a(x), y
    )
    feats = model_b.trunk(x)
    outs = {n: h(feats) for n, h in model_b.heads.items()}
    losses = [
        torch.nn.functional.cross_entropy(outs["digit"], y["digit"]),
        torch.nn.functional.cross_entropy(outs["parity"], y["parity"]),
        torch.nn.functional.mse_loss(outs["ink"].squeeze(-1), y["ink"]),
    ]
    mtl_backward(losses, features=feats)
    weights = jac_to_grad(list(model_b.trunk.parameters()), UPGrad())
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        torch.tensor([t.weight for t in record.terms]), weights, rtol=1e-4, atol=1e-6
    )


def test_loss_methods_compute_no_per_task_gradients(digits, monkeypatch):
    """Loss-based methods take one combined backward per step through the model, never one
    gradient per task (the method's own bookkeeping may differentiate its small scalar state)."""
    grads, backwards = [], []
    original_grad, original_backward = torch.autograd.grad, torch.autograd.backward

    def spy_grad(outputs, inputs, *args, **kwargs):
        grads.append(inputs)
        return original_grad(outputs, inputs, *args, **kwargs)

    def spy_backward(tensors, *args, **kwargs):
        backwards.append(tensors)
        return original_backward(tensors, *args, **kwargs)

    for policy in ["ew", "uw", "dwa", "famo", "rlw", "imtll", "geometricmean", "stch"]:
        model = digits.model(0)
        composer = lossrag.wrap(model, digits.tasks, policy)
        params = {id(p) for p in model.parameters()}
        monkeypatch.setattr(torch.autograd, "grad", spy_grad)
        monkeypatch.setattr(torch.autograd, "backward", spy_backward)
        for i in range(3):
            x, y = digits.batch(i)
            composer.backward(model(x), y)
        monkeypatch.setattr(torch.autograd, "grad", original_grad)
        monkeypatch.setattr(torch.autograd, "backward", original_backward)
        on_model = [c for c in grads if any(id(t) in params for t in c)]
        assert on_model == [] and len(backwards) == 3, policy
        grads.clear()
        backwards.clear()


@pytest.mark.parametrize("policy", STATEFUL_OR_RANDOM)
def test_resume_is_bit_for_bit(digits, policy, tmp_path):
    model, opt, composer, _ = _train(digits, policy, steps=7, composer_seed=5)
    path = tmp_path / "ckpt.pt"
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "composer": composer.state_dict()},
        path,
    )

    def go_on(model, opt, composer, start):
        for i in range(start, start + 6):
            x, y = digits.batch(i)
            opt.zero_grad()
            composer.backward(model(x), y)
            opt.step()
            if i % 4 == 3:
                composer.epoch_end()
        return [p.detach().clone() for p in model.parameters()]

    expected = go_on(model, opt, composer, 7)
    ckpt = torch.load(path, weights_only=True)
    model2 = digits.model(9)
    model2.load_state_dict(ckpt["model"])
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    opt2.load_state_dict(ckpt["opt"])
    composer2 = lossrag.wrap(model2, digits.tasks, policy, shared=model2.trunk, seed=123)
    composer2.load_state_dict(ckpt["composer"])
    got = go_on(model2, opt2, composer2, 7)
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)


def test_same_seed_same_run(digits):
    a = [p.detach() for p in _train(digits, "rlw", 10, composer_seed=1)[0].parameters()]
    b = [p.detach() for p in _train(digits, "rlw", 10, composer_seed=1)[0].parameters()]
    c = [p.detach() for p in _train(digits, "rlw", 10, composer_seed=2)[0].parameters()]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_composer_leaves_global_rng_alone(digits):
    model = digits.model(0)
    composer = lossrag.wrap(model, digits.tasks, "rlw", seed=0)
    torch.manual_seed(42)
    x, y = digits.batch(0)
    composer.backward(model(x), y)
    after = torch.rand(1)
    torch.manual_seed(42)
    assert torch.equal(after, torch.rand(1))


def test_famo_reruns_previous_batch_with_buffers_restored(digits):
    """FAMO's logit update uses batch 0 re-evaluated after the optimizer step, exactly as
    torchjd's FAMO.update would; BatchNorm statistics and the global RNG are left untouched."""
    from torchjd.scalarization import FAMO

    model = digits.model(0, batchnorm=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    composer = lossrag.wrap(model, digits.tasks, "famo", shared=model.trunk)
    logits = composer.method.scalarizer._w
    x0, y0 = digits.batch(0)
    opt.zero_grad()
    r0 = composer.backward(model(x0), y0)
    opt.step()
    assert torch.equal(logits.detach(), torch.zeros(3))  # nothing to learn from yet
    # reference: the same update computed by hand on a copy of the model
    import copy

    twin = copy.deepcopy(model)
    with torch.no_grad():
        out = twin(x0)
    after = torch.stack(
        [
            torch.nn.functional.cross_entropy(out["digit"], y0["digit"]),
            torch.nn.functional.cross_entropy(out["parity"], y0["parity"]),
            torch.nn.functional.mse_loss(out["ink"], y0["ink"]),
        ]
    )
    reference = FAMO(3)
    reference(torch.tensor([r0.losses[k] for k in ("digit", "parity", "ink")]))
    reference.update(after)

    x1, y1 = digits.batch(1)
    out1 = model(x1)
    stats = [b.clone() for b in model.buffers()]
    torch.manual_seed(7)
    composer.backward(out1, y1)
    draw = torch.rand(1)
    torch.manual_seed(7)
    assert torch.equal(draw, torch.rand(1))
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers(), strict=True))
    torch.testing.assert_close(logits.detach(), reference._w.detach())
    assert not torch.equal(logits.detach(), torch.zeros(3))


def test_what_needs_shared_is_named(digits):
    """The error says what needs ``shared=``: the method, or a representation task beside a
    method that does not (it blamed EW, found by a user trial)."""
    model = digits.model(0)
    with pytest.raises(ValueError, match=r"shared=.*'gradnorm' takes per-task gradients there"):
        lossrag.wrap(model, digits.tasks, "gradnorm")
    with pytest.raises(ValueError, match=r"shared=.*'mgda' takes per-task gradients there"):
        lossrag.wrap(model, digits.tasks, "mgda")
    view = lossrag.Task("view", kind="representation", loss="supcon", positives="digit")
    tasks = [*digits.tasks, view]
    with pytest.raises(
        ValueError, match=r"shared=.*is needed: the representation task 'view'"
    ) as e:
        lossrag.wrap(model, tasks, "ew")
    assert "'ew'" not in str(e.value)


def test_representation_task_trains_shared_features(digits):
    """A SupCon term on the output of `shared`, with the digit labels as positives: it reaches the
    trunk only, and lowering it pulls same-class features together."""
    rep = lossrag.Task("emb", kind="representation", positives="digit", loss="supcon")
    tasks = [*digits.tasks, rep]
    model = digits.model(0)
    head = model.heads["ink"].weight
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    composer = lossrag.wrap(model, tasks, "ew", shared=model.trunk)
    x, y = digits.batch(0)
    record = composer.backward(model(x), y)
    assert [t.loss for t in record.terms] == ["ce", "ce", "l2", "supcon"]
    assert math.isfinite(record.losses["emb"])
    # the representation term alone: gradient on the trunk, none on the heads
    model.zero_grad()
    only_rep = lossrag.wrap(
        model, [rep, digits.tasks[0]], lossrag.weighting.make_method("ew"), shared=model.trunk
    )
    only_rep.backward({"digit": model(x)["digit"].detach().requires_grad_()}, {"digit": y["digit"]})
    assert head.grad is None
    assert model.trunk[1].weight.grad is not None and model.trunk[1].weight.grad.abs().sum() > 0
    first = record.losses["emb"]
    for i in range(30):
        x, y = digits.batch(i % 4)
        opt.zero_grad()
        last = composer.backward(model(x), y)
        opt.step()
    assert last.losses["emb"] < first


def test_representation_task_needs_a_classification_positive(digits):
    rep = lossrag.Task("emb", kind="representation", positives="ink")
    with pytest.raises(ValueError, match="must name a classification task"):
        lossrag.wrap(digits.model(), [*digits.tasks, rep], "ew", shared=digits.model().trunk)


def test_task_names_with_colons_work_with_the_retrieval_policy():
    """Term keys are ``task:entry``; a task whose name holds a colon must still train."""
    tasks = [
        lossrag.Task("a:x", kind="regression"),
        lossrag.Task("b:y:z", kind="classification", num_classes=3),
    ]
    from lossrag.models import MultiTaskMLP

    torch.manual_seed(0)
    model = MultiTaskMLP(5, [8], tasks)
    composer = lossrag.wrap(model, tasks, "lossrag", shared=model.trunk, seed=0)
    for _ in range(3):
        x = torch.randn(16, 5)
        y = {"a:x": x.sum(1), "b:y:z": (x[:, 0] > 0).long()}
        record = composer.backward(model(x), y)
        assert not record.skipped
    assert {t.task for t in record.terms} == {"a:x", "b:y:z"}


def test_a_binary_task_with_one_logit_is_a_one_label_multilabel_task():
    """``num_classes=1`` was refused for every kind; a binary task with one logit is a
    multilabel task of one label (``MultiTaskMLP`` keeps its ``(B, 1)`` output), and the
    default policy learns it beside a raw-unit regression (found by a user trial)."""
    tasks = [
        lossrag.Task("pos", kind="multilabel", num_classes=1),
        lossrag.Task("v", kind="regression"),
    ]
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 2 \(use multilabel"):
        lossrag.Task("pos", kind="classification", num_classes=1)
    with pytest.raises(ValueError, match="non-blank"):
        lossrag.Task("  ", kind="regression")
    torch.manual_seed(0)
    model = MultiTaskMLP(4, [16], tasks)
    composer = lossrag.wrap(model, tasks, "default", shared=model.trunk, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        x = torch.randn(64, 4)
        opt.zero_grad()
        composer.backward(model(x), {"pos": (x[:, :1] > 0).float(), "v": 50 + 5 * x[:, 1]})
        opt.step()
    x = torch.randn(500, 4)
    with torch.no_grad():
        out = model(x)
    assert out["pos"].shape == (500, 1)
    assert float(((out["pos"] > 0) == (x[:, :1] > 0)).float().mean()) > 0.9
