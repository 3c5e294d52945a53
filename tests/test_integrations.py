"""The Lightning and Hugging Face integrations, end to end on CPU: losses fall, the method's state
updates once per optimizer step under gradient accumulation, and a two-process DDP run ends with
the same parameters and method state on both ranks."""

from __future__ import annotations

import importlib.util
import math
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import lossrag


def _require(name: str) -> None:
    """The extras are part of ``dev``, which CI installs: a missing one fails there."""
    if os.environ.get("CI") is None:
        pytest.importorskip(name)


_require("lightning")
_require("transformers")

import lightning  # noqa: E402

from lossrag.integrations.lightning import LossRAGModule, method_kind  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]


class Rows(Dataset[Batch]):
    """The digits problem of ``conftest.py`` as ``(x, {task: target})`` rows."""

    def __init__(self, x: torch.Tensor, y: dict[str, torch.Tensor], n: int | None = None) -> None:
        self.x, self.y = x[:n], {k: v[:n] for k, v in y.items()}

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Batch:
        return self.x[i], {k: v[i] for k, v in self.y.items()}


def task_losses(model: torch.nn.Module, digits: Any) -> dict[str, float]:
    """Each task's loss on the whole data set (eval mode, no gradient)."""
    with torch.no_grad():
        out = model(digits.x)
    return {
        "digit": float(F.cross_entropy(out["digit"], digits.y["digit"])),
        "parity": float(F.cross_entropy(out["parity"], digits.y["parity"])),
        "ink": float(F.l1_loss(out["ink"], digits.y["ink"])),
    }


def trainer(**kw: Any) -> lightning.Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **kw,
    }
    return lightning.Trainer(**options)


def count_calls(obj: Any, name: str) -> list[int]:
    """Wrap ``obj.name`` so that each call appends to the returned list."""
    calls: list[int] = []
    original: Callable[..., Any] = getattr(obj, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    setattr(obj, name, counted)
    return calls


class Counting(LossRAGModule):
    """Counts micro-batches and wraps the method's update when the composer is built."""

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.micro_batches = 0
        update = "observe_rerun" if self.policy == "famo" else "weigh"
        self.updates = count_calls(
            self.composer.method, update if self.kind == "loss" else "aggregate"
        )
        self.epoch_ends = count_calls(self.composer.method, "epoch_end")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        self.micro_batches += 1
        return super().training_step(batch, batch_idx)


def plain_loop(digits: Any, policy: str, steps: int) -> torch.nn.Module:
    """The same training as a hand-written loop around the composer (the reference)."""
    model = digits.model()
    composer = lossrag.wrap(model, digits.tasks, policy, shared=model.trunk, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    per_epoch = len(digits.x) // 32
    for i in range(steps):
        x, y = digits.batch(i)
        opt.zero_grad()
        if composer.method.kind == "loss":
            composer.loss(model(x), y).backward()
        else:
            composer.backward(model(x), y)
        opt.step()
        if (i + 1) % per_epoch == 0:
            composer.epoch_end()
    composer.close()
    return model


@pytest.mark.parametrize(("policy", "automatic"), [("famo", True), ("mgda", False)])
def test_lightning_trains_loss_and_gradient_methods(
    digits: Any, policy: str, automatic: bool
) -> None:
    """FAMO (loss-based) runs under automatic, MGDA (gradient-based) under manual optimisation:
    the Trainer's run matches the plain composer loop step for step, the losses fall, the method
    updates once per step and the weights are logged every ``log_every_n_steps``."""
    model = digits.model()
    before = task_losses(model, digits)
    module = Counting(model, digits.tasks, policy, shared=model.trunk, lr=1e-2, seed=0)
    assert module.automatic_optimization is automatic
    fit = trainer(max_steps=40, log_every_n_steps=5)
    fit.fit(module, DataLoader(Rows(digits.x, digits.y), batch_size=32))
    reference = plain_loop(digits, policy, 40)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    after = task_losses(model, digits)
    if policy == "famo":  # FAMO lowers Σ log L_i; in 40 steps on this problem mostly 'ink''s
        log_sum = sum(math.log(after[t]) - math.log(before[t]) for t in before)
        assert log_sum < -1.0 and all(after[t] < 1.01 * before[t] for t in before)
    else:
        assert all(after[t] < 0.8 * before[t] for t in before), (before, after)
    # FAMO updates its logits once per step, after it (at the next step's start).
    assert fit.global_step == 40 and module.composer.step == 40
    assert len(module.updates) == (39 if policy == "famo" else 40)
    record = module.composer.last_record
    assert record is not None and record.step == 39 and not record.skipped
    weights = record.task_weights()
    assert all(w is not None and w > 0 for w in weights.values()), weights
    logged = {k: float(v) for k, v in fit.callback_metrics.items()}
    assert set(logged) == {f"lossrag/{m}/{t}" for m in ("weight", "loss") for t in weights}
    # Logged where Lightning writes its logs, (step + 1) % 5 == 0: the last record's values
    # (at step % 5 == 0 they were step 35's, written under step 39)
    assert logged["lossrag/weight/digit"] == pytest.approx(weights["digit"], abs=1e-9)
    assert logged["lossrag/loss/digit"] == pytest.approx(record.losses["digit"], abs=1e-6)
    # The composer was closed at the end of fit (its hooks are gone from the model).
    assert not model._forward_pre_hooks and module._closed


@pytest.mark.parametrize("policy", ["famo", "mgda"])
def test_lightning_accumulation_updates_once_per_optimizer_step(digits: Any, policy: str) -> None:
    """Two micro-batches per optimizer step (Lightning's option for FAMO, the module's for
    MGDA): the composer counts one step and the method one update per optimizer step, also for
    the shorter last step of each 5-batch epoch (FAMO's logits too); ``epoch_end`` (DWA's
    signal) runs once per epoch."""
    model = digits.model()
    kind = method_kind(policy)
    module = Counting(
        model,
        digits.tasks,
        policy,
        shared=model.trunk,
        lr=1e-2,
        seed=0,
        accumulate_grad_batches=1 if kind == "loss" else 2,
    )
    fit = trainer(max_epochs=2, accumulate_grad_batches=2 if kind == "loss" else 1)
    loader = DataLoader(Rows(digits.x, digits.y, n=160), batch_size=32)  # 5 batches an epoch
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r"Composer\.accumulate")
        fit.fit(module, loader)
    assert module.micro_batches == 10
    assert fit.global_step == 6  # 3 optimizer steps an epoch: 2 + 2 + 1 micro-batches
    assert module.composer.step == 6
    assert len(module.epoch_ends) == 2
    if kind == "loss":  # FAMO's logit update after each optimizer step but the last
        assert len(module.updates) == 5


def test_lightning_refuses_module_accumulation_for_loss_methods(digits: Any) -> None:
    model = digits.model()
    with pytest.raises(ValueError, match=r"Trainer\(accumulate_grad_batches=2\)"):
        LossRAGModule(model, digits.tasks, "famo", shared=model.trunk, accumulate_grad_batches=2)
    with pytest.raises(ValueError, match="submodule of `model`"):
        LossRAGModule(model, digits.tasks, "mgda", shared=torch.nn.Linear(2, 2))


def test_lightning_checkpoint_restores_the_method_state(digits: Any, tmp_path: Path) -> None:
    """The composer's state travels in Lightning checkpoints: resuming continues FAMO from the
    saved logits and step instead of starting over."""
    loader = DataLoader(Rows(digits.x, digits.y, n=128), batch_size=32)
    model = digits.model()
    module = LossRAGModule(model, digits.tasks, "famo", shared=model.trunk, lr=1e-2, seed=0)
    first = trainer(max_steps=4, default_root_dir=tmp_path)
    first.fit(module, loader)
    first.save_checkpoint(tmp_path / "run.ckpt")
    saved = module.composer.state_dict()
    resumed = LossRAGModule(digits.model(seed=1), digits.tasks, "famo", lr=1e-2, seed=0)
    second = trainer(max_steps=4, default_root_dir=tmp_path)
    second.fit(resumed, loader, ckpt_path=tmp_path / "run.ckpt")  # max_steps already reached
    state = resumed.composer.state_dict()
    assert state["step"] == saved["step"] == 4
    assert torch.equal(state["method"]["logits"], saved["method"]["logits"])
    assert not torch.equal(saved["method"]["logits"], torch.zeros_like(saved["method"]["logits"]))


@pytest.mark.parametrize("compiled", [False, True])
def test_lightning_checkpoints_predict_in_user_units_and_resume_exactly(
    digits: Any, tmp_path: Path, compiled: bool
) -> None:
    """With target normalisation, a checkpoint written while fitting holds the heads in the
    targets' units (a plain model loaded from it predicts like the trained one), and a fit
    resumed from it ends with the parameters of the uninterrupted fit; a compiled model's too
    (its keys are ``model._orig_mod.*``)."""
    raw = {**digits.y, "ink": digits.y["ink"] * 300 + 1000}  # far from standard units
    loader = DataLoader(Rows(digits.x, raw, n=128), batch_size=32)  # 4 steps an epoch
    prefix = "model._orig_mod." if compiled else "model."

    def fit(steps: int, ckpt: Path | None = None) -> LossRAGModule:
        plain = digits.model()
        model = torch.compile(plain, backend="eager") if compiled else plain
        module = LossRAGModule(
            model, digits.tasks, "ew", shared=plain.trunk, lr=1e-2, seed=0, normalize_targets=True
        )
        every = lightning.pytorch.callbacks.ModelCheckpoint(
            dirpath=tmp_path / f"ckpt{steps}", every_n_train_steps=4, save_top_k=-1
        )
        run = trainer(max_steps=steps, enable_checkpointing=True, callbacks=[every])
        run.fit(module, loader, ckpt_path=ckpt)
        return module

    whole = fit(8)  # closed at the end: heads in user units
    last = torch.load(tmp_path / "ckpt8" / "epoch=1-step=8.ckpt", weights_only=False)
    plain = digits.model()
    plain.load_state_dict({k.removeprefix(prefix): v for k, v in last["state_dict"].items()})
    with torch.no_grad():
        expected, got = whole.model(digits.x[:64]), plain(digits.x[:64])
    assert float((got["ink"] - raw["ink"][:64]).abs().mean()) < 300  # not ~1000 off
    for name in ("digit", "ink"):
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-4)
    resumed = fit(8, tmp_path / "ckpt8" / "epoch=0-step=4.ckpt")
    for a, b in zip(resumed.parameters(), whole.parameters(), strict=True):
        assert torch.equal(a, b)


def test_lightning_resumed_at_an_epochs_last_step_ends_that_epoch(
    digits: Any, tmp_path: Path
) -> None:
    """A checkpoint written every n steps at an epoch's last step holds the composer before
    that epoch ended; the resumed fit ends it, and DWA continues exactly (found by a user
    trial: it ran one epoch behind)."""
    loader = DataLoader(Rows(digits.x, digits.y, n=128), batch_size=32)  # 4 steps an epoch

    def fit(ckpt: Path | None = None) -> LossRAGModule:
        model = digits.model()
        module = LossRAGModule(model, digits.tasks, "dwa", shared=model.trunk, lr=1e-2, seed=0)
        every = lightning.pytorch.callbacks.ModelCheckpoint(
            dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1
        )
        trainer(max_steps=12, enable_checkpointing=True, callbacks=[every]).fit(
            module, loader, ckpt_path=ckpt
        )
        return module

    whole = fit()
    resumed = fit(tmp_path / "ckpt" / "epoch=0-step=4.ckpt")
    assert resumed.composer.epochs == whole.composer.epochs == 3
    for a, b in zip(resumed.parameters(), whole.parameters(), strict=True):
        assert torch.equal(a, b)


def test_lightning_a_trainer_used_again_does_not_end_a_new_modules_epochs(digits: Any) -> None:
    """The catch-up is for a fit resumed from a checkpoint only: a Trainer fitted again keeps
    its epoch count, which a new module's composer never saw (found by a review)."""
    loader = DataLoader(Rows(digits.x, digits.y, n=128), batch_size=32)
    run = trainer(max_epochs=2)
    first = LossRAGModule(digits.model(), digits.tasks, "dwa", lr=1e-2, seed=0)
    run.fit(first, loader)
    second = LossRAGModule(digits.model(), digits.tasks, "dwa", lr=1e-2, seed=0)
    run.fit_loop.max_epochs = 3
    run.fit(second, loader)
    assert first.composer.epochs == 2 and second.composer.epochs == 1


@pytest.mark.parametrize(("init_scale", "skipped"), [(2.0**40, True), (2.0**10, False)])
def test_lightning_fp16_scaler_skips_leave_the_method_state(
    digits: Any, init_scale: float, skipped: bool
) -> None:
    """Under fp16 mixed precision the module hands Lightning's GradScaler to the composer: when
    the scaler skips every step (an overflowing scale), FAMO's logits stay at their start; with
    a sane scale they move."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    model = digits.model()
    module = LossRAGModule(model, digits.tasks, "famo", shared=model.trunk, lr=1e-2, seed=0)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    fit = trainer(max_steps=6, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    fit.fit(module, DataLoader(Rows(digits.x, digits.y, n=192), batch_size=32))
    assert module.composer.options.scaler is scaler
    logits = module.composer.state_dict()["method"]["logits"]
    if skipped:
        assert scaler.get_scale() == init_scale / 2**6  # all six steps skipped
        assert torch.equal(logits, torch.zeros_like(logits))
    else:
        assert scaler.get_scale() == init_scale and logits.abs().sum() > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_lightning_ddp_two_processes_agree(tmp_path: Path) -> None:
    """``strategy="ddp"``, two gloo processes on 127.0.0.1: a script launched as a user would
    (Lightning's launcher re-runs it for rank 1, which it cannot do for pytest itself). FAMO
    (automatic, accumulation 2) and MGDA (manual) each end with bit-identical parameters,
    method state and weights on both ranks, which trained on different halves of the data."""
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):
        env.pop(key, None)
    script = ROOT / "tests" / "_lightning_ddp.py"
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    for policy in ("famo", "mgda"):
        ranks = [torch.load(tmp_path / f"{policy}-rank{r}.pt", weights_only=False) for r in (0, 1)]
        a, b = ranks
        assert (a["rank"], b["rank"], a["world"]) == (0, 1, 2)
        assert a["first_batch"] != b["first_batch"]  # each rank trained on its own half
        assert a["global_step"] == b["global_step"] == a["step"] == b["step"] == 3
        assert not torch.equal(a["params"], a["initial"])
        assert torch.equal(a["initial"], b["initial"])
        assert torch.equal(a["params"], b["params"]), policy
        assert a["weights"] == b["weights"] and all(w is not None for w in a["weights"].values())
        assert a["method"].keys() == b["method"].keys()
        for key, value in a["method"].items():
            other = b["method"][key]
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, other), (policy, key)
            elif key != "optimizer":
                assert value == other, (policy, key)
        if policy == "famo":
            exp_avg = [s["exp_avg"] for s in a["method"]["optimizer"]["state"].values()]
            other_avg = [s["exp_avg"] for s in b["method"]["optimizer"]["state"].values()]
            assert exp_avg and all(
                torch.equal(x, y) for x, y in zip(exp_avg, other_avg, strict=True)
            )


def _example() -> Any:
    spec = importlib.util.spec_from_file_location(
        "huggingface_trainer", ROOT / "examples" / "huggingface_trainer.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("accumulation", [1, 2])
def test_huggingface_trainer_example(tmp_path: Path, accumulation: int) -> None:
    """``examples/huggingface_trainer.py``: ``Trainer.compute_loss`` returns the composer's FAMO
    loss; the logged loss and every task's loss fall, every optimizer step has one record with
    positive weights (one per step also with 2 accumulated micro-batches), and ``evaluate()``
    gives the held-out sum of the task losses without touching the method."""
    example = _example()
    result = example.main(str(tmp_path), max_steps=30, accumulation=accumulation)
    assert len(result.losses) == 6 and result.losses[-1] < 0.7 * result.losses[0], result.losses
    assert [r.step for r in result.records] == list(range(30))
    for record in result.records:
        weights = record.task_weights()
        assert set(weights) == {"kind", "size"} and all(
            w is not None and w > 0 for w in weights.values()
        )
    first, last = result.records[:5], result.records[-5:]
    for task in ("kind", "size"):
        early = sum(r.losses[task] for r in first) / 5
        late = sum(r.losses[task] for r in last) / 5
        assert late < 0.8 * early, (task, early, late)
    # Evaluation: the unweighted sum of the task losses, no update of the method.
    assert 0 < result.eval_loss < 0.8 * sum(result.records[0].losses.values())
    assert result.steps == 30


@pytest.mark.parametrize("compiled", [False, True])
def test_huggingface_checkpoints_predict_in_user_units_and_resume_exactly(
    tmp_path: Path, compiled: bool
) -> None:
    """With target normalisation, a checkpoint the Trainer writes while training holds the
    model with its heads in the targets' units, and a run resumed from one (the composer's
    state and the normalised heads restored) ends with the parameters of the uninterrupted
    run; a compiled model's too (its keys are ``_orig_mod.*``)."""
    import safetensors.torch
    from transformers import TrainingArguments

    from lossrag.integrations.huggingface import STATE_FILE, LossRAGTrainer

    example = _example()

    class Raw(example.Rows):  # type: ignore[name-defined,misc]
        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            row = super().__getitem__(i)
            return {**row, "size": row["size"] * 300 + 1000}  # far from standard units

    def run(out: Path, resume: Path | None = None, best: bool = False) -> Any:
        torch.manual_seed(0)
        net = example.TwoTaskNet()
        model = torch.compile(net, backend="eager") if compiled else net
        args = TrainingArguments(
            output_dir=str(out),
            max_steps=10,
            per_device_train_batch_size=32,
            learning_rate=1e-2,
            use_cpu=True,
            report_to=[],
            save_strategy="steps",
            save_steps=5,
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
            load_best_model_at_end=best,
            eval_strategy="steps" if best else "no",
            eval_steps=5,
            remove_unused_columns=not compiled,  # a compiled forward hides its arguments
        )
        trainer = LossRAGTrainer(
            model=model,
            args=args,
            train_dataset=Raw(),
            eval_dataset=Raw(64, seed=1),
            tasks=example.TASKS,
            policy="famo",
            shared=net.trunk,
            wrap_options={"seed": 0, "normalize_targets": True},
        )
        trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
        return model

    whole = run(tmp_path / "whole")  # closed at the end: heads in user units
    saved = tmp_path / "whole" / "checkpoint-10"
    assert (saved / STATE_FILE).is_file()
    plain = example.TwoTaskNet()
    stored = safetensors.torch.load_file(saved / "model.safetensors")
    prefix = "_orig_mod." if compiled else ""
    assert all(k.startswith(prefix) for k in stored)
    plain.load_state_dict({k.removeprefix(prefix): v for k, v in stored.items()})
    x = Raw().x[:64]
    with torch.no_grad():
        expected, got = whole(x), plain(x)
    for name in ("kind", "size"):
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-3)
    resumed = run(tmp_path / "resumed", tmp_path / "whole" / "checkpoint-5")
    for a, b in zip(resumed.parameters(), whole.parameters(), strict=True):
        assert torch.equal(a, b)
    # load_best_model_at_end: the model after train() is the best checkpoint's, in user units
    best = run(tmp_path / "best", best=True)
    chosen = [tmp_path / "best" / f"checkpoint-{n}" / "model.safetensors" for n in (5, 10)]
    states = [safetensors.torch.load_file(path) for path in chosen]
    assert any(
        all(torch.equal(v, best.state_dict()[k]) for k, v in state.items()) for state in states
    )


def test_huggingface_trainer_ends_the_methods_epochs_and_resumes_at_an_epochs_end(
    tmp_path: Path,
) -> None:
    """Each epoch's end reaches the method: DWA weighs by its last two epochs' losses after two
    epochs (before, the Trainer never called ``epoch_end`` and DWA stayed uniform). A run resumed
    from a checkpoint written at an epoch's last step, before that epoch ended, ends it and
    continues exactly (found by a user trial: DWA ran one epoch behind)."""
    example = _example()
    from transformers import TrainingArguments

    from lossrag.integrations.huggingface import LossRAGTrainer

    def run(out: Path, resume: Path | None = None) -> Any:
        torch.manual_seed(0)
        model = example.TwoTaskNet()
        args = TrainingArguments(
            output_dir=str(out),
            num_train_epochs=3,
            per_device_train_batch_size=64,
            use_cpu=True,
            report_to=[],
            save_strategy="steps",
            save_steps=4,  # 256 rows: the last step of each epoch
            disable_tqdm=True,
            seed=0,
        )
        trainer = LossRAGTrainer(
            model=model,
            args=args,
            train_dataset=example.Rows(256),
            tasks=example.TASKS,
            policy="dwa",
            shared=model.trunk,
            wrap_options={"seed": 0},
        )
        trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
        return model, trainer.composer

    whole, composer = run(tmp_path / "whole")
    assert composer.epochs == 3 and len(composer.method.scalarizer._previous_averages) == 2
    weights = composer.last_record.task_weights()
    assert weights["kind"] != weights["size"], weights
    for step in (4, 8):
        resumed, again = run(tmp_path / f"from-{step}", tmp_path / "whole" / f"checkpoint-{step}")
        assert again.epochs == 3
        for a, b in zip(resumed.parameters(), whole.parameters(), strict=True):
            assert torch.equal(a, b), step


def test_huggingface_trainer_refuses_gradient_methods(tmp_path: Path) -> None:
    example = _example()
    from transformers import TrainingArguments

    from lossrag.integrations.huggingface import LossRAGTrainer

    model = example.TwoTaskNet()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(TypeError, match="gradient-based"):
        LossRAGTrainer(
            model=model, args=args, tasks=example.TASKS, policy="mgda", shared=model.trunk
        )
    with pytest.raises(ValueError, match=r"leaves out task column\(s\) \['size'\]"):
        LossRAGTrainer(
            model=model,
            args=TrainingArguments(
                output_dir=str(tmp_path), use_cpu=True, report_to=[], label_names=["kind"]
            ),
            tasks=example.TASKS,
        )


def test_importing_lossrag_imports_no_framework() -> None:
    """``import lossrag`` (and its integrations package) stays free of Lightning and
    Transformers."""
    code = (
        "import sys, lossrag, lossrag.integrations; lossrag.wrap; "
        "print(sorted(m for m in ('lightning', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
