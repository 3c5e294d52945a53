"""Lightning integration: :class:`LossRAGModule`, a ``LightningModule`` that trains a multi-task
model with any LossRAG weighting method (``pip install "lossrag[lightning]"``).

Give it the model, the tasks and the policy; it builds the composer once the process group
exists (``on_fit_start``), picks the optimisation mode the method needs and does the training
step for you:

- **loss-based methods** (EW, UW, DWA, FAMO, ..., the retrieval policies ``"default"`` and
  ``"lossrag"``): automatic optimisation. ``training_step`` returns ``composer.loss(...)``;
  Lightning calls ``backward``, DDP reduces the gradients, AMP and
  ``Trainer(accumulate_grad_batches=n)`` work as usual (the ``n`` micro-batches of one optimizer
  step form one composer window, so the method's weights update once per optimizer step).
- **gradient-based methods** (MGDA, PCGrad, CAGrad, Nash-MTL, ...): manual optimisation, since
  they need one gradient per task. ``training_step`` calls ``composer.backward(...)``, which fills
  ``.grad`` (all-reduced across DDP ranks by the composer itself), then steps the optimizer.
  Lightning refuses ``Trainer(accumulate_grad_batches=n)`` under manual optimisation: pass
  ``LossRAGModule(..., accumulate_grad_batches=n)`` instead. Gradient clipping by the Trainer
  is refused too (clip in :meth:`LossRAGModule.on_before_optimizer_step` if needed).

It also calls ``composer.epoch_end()`` at each epoch end (DWA, STCH's nadir form; a run resumed
from a checkpoint written at an epoch's last step catches up on that epoch's end; the epochs
then fall where Lightning puts them: resumed with ``max_steps`` from a checkpoint written at an
epoch end, Lightning 2.6 itself ends the next epochs one step late (4 batches an epoch: at steps
5, 9, 12, not 4, 8, 12), with or without LossRAG: Lightning-AI/pytorch-lightning#19617), logs each
task's weight and loss every ``Trainer(log_every_n_steps=...)`` optimizer steps
(``lossrag/weight/<task>``, ``lossrag/loss/<task>``; reading a record costs one device sync, so
it is not done at other steps), keeps the composer's state in Lightning checkpoints and closes
the composer when fitting ends. Batches are ``(x, {task: target})`` pairs; override
:meth:`LossRAGModule.split_batch` for another layout and
:meth:`LossRAGModule.configure_optimizers` for another optimizer. Subclasses that override a
hook of this class must call ``super()``.

Example (the same code runs with ``strategy="ddp", devices=2``)::

    import lightning, torch
    import lossrag
    from lossrag.integrations.lightning import LossRAGModule
    from lossrag.models import MultiTaskMLP

    tasks = [lossrag.Task("digit", kind="classification", num_classes=10),
             lossrag.Task("ink", kind="regression")]
    model = MultiTaskMLP(64, [32], tasks)
    module = LossRAGModule(model, tasks, policy="famo", shared=model.trunk, lr=1e-3)
    trainer = lightning.Trainer(max_epochs=3, accumulate_grad_batches=2)
    trainer.fit(module, train_loader)     # batches: (x, {"digit": labels, "ink": values})
    module.composer.last_record           # weights of the last optimizer step

Importing :mod:`lossrag` does not import Lightning; only this module does.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lossrag.compose import Composer, wrap
from lossrag.record import StepRecord
from lossrag.tasks import Task
from lossrag.weighting import Method, available, method_class

try:
    import lightning
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"{__name__} needs lightning: pip install 'lossrag[lightning]' ({err})"
    ) from err

__all__ = ["LossRAGModule", "method_kind", "record_metrics"]

#: Key of the composer's state in a Lightning checkpoint.
CHECKPOINT_KEY = "lossrag_composer"
#: Key, in the composer's state of a checkpoint, of the normalised heads (``normalize_targets``).
_HEADS_KEY = "normalised_heads"

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def method_kind(policy: str | Method) -> str:
    """``"loss"`` or ``"gradient"``: the family of ``policy`` without building the composer
    (Lightning needs the optimisation mode before the process group exists). Retrieval
    policies (``"default"``, a policy folder) are loss-based."""
    if isinstance(policy, Method):
        return policy.kind
    if isinstance(policy, str) and policy in available():
        return method_class(policy).kind
    return "loss"


class LossRAGModule(lightning.LightningModule):
    """A ``LightningModule`` that trains ``model`` on ``tasks`` weighted by ``policy``.

    Args:
        model: The multi-task model; ``model(x)`` returns ``{task name: output}``.
        tasks: The tasks, with unique names.
        policy: What :func:`lossrag.wrap` takes: a method name, ``"default"``, a policy folder
            or a configured :class:`~lossrag.weighting.Method`.
        shared: The shared trunk, a submodule of ``model`` (gradient-based methods, GradNorm and
            the retrieval policies need it).
        lr: Learning rate of the default optimizer (Adam), when ``optimizer`` is not given.
        optimizer: A callable from the parameters to an optimizer (e.g.
            ``functools.partial(torch.optim.SGD, lr=0.1)``); default Adam with ``lr``. Override
            :meth:`configure_optimizers` for schedulers or several parameter groups.
        accumulate_grad_batches: Micro-batches per optimizer step for gradient-based methods
            (manual optimisation, where Lightning refuses its own option). Loss-based methods
            use ``Trainer(accumulate_grad_batches=n)`` and must leave this at 1.
        trace: Path of a JSONL trace of every step's record (see :func:`lossrag.wrap`).
        **options: The other keyword options of :func:`lossrag.wrap` (``seed``, ``query``,
            ``meta_every``, ...). With ``query=``, the Trainer's optimizer (if it has one) is
            passed as :func:`lossrag.wrap`'s ``optimizer=``, so that the meta-step
            preconditions as it does; under
            ``Trainer(precision="16-mixed")`` its ``GradScaler`` is passed as ``scaler=`` (a
            step the scaler skips leaves the method's state as it was).

    Attributes:
        model: The wrapped model (a submodule: its parameters are this module's).
        composer: The :class:`~lossrag.Composer`, built at ``on_fit_start``.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[Task],
        policy: str | Method = "ew",
        shared: nn.Module | None = None,
        *,
        lr: float = 1e-3,
        optimizer: OptimizerFactory | None = None,
        accumulate_grad_batches: int = 1,
        trace: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"LossRAGModule: `model` must be a torch.nn.Module, got {type(model).__name__}."
            )
        self.model = model
        self.tasks = list(tasks)
        self.policy = policy
        # Kept by name, not as an attribute: a module attribute would register the trunk twice.
        self.shared_name = _submodule_name(model, shared)
        self.lr = lr
        self.optimizer_factory = optimizer
        self.trace = trace
        self.options = options
        self.kind = method_kind(policy)
        if (
            not isinstance(accumulate_grad_batches, int)
            or isinstance(accumulate_grad_batches, bool)
            or accumulate_grad_batches < 1
        ):
            raise ValueError(
                "LossRAGModule: accumulate_grad_batches must be an integer >= 1, got "
                f"{accumulate_grad_batches!r}."
            )
        if accumulate_grad_batches > 1 and self.kind == "loss":
            raise ValueError(
                f"LossRAGModule: policy {policy!r} is loss-based and trains under Lightning's "
                "automatic optimisation; use Trainer(accumulate_grad_batches="
                f"{accumulate_grad_batches}) instead of LossRAGModule(accumulate_grad_batches=...)."
            )
        self.manual_accumulation = accumulate_grad_batches
        self.automatic_optimization = self.kind == "loss"
        self._composer: Composer | None = None
        self._closed = True
        self._restored: dict[str, Any] | None = None
        self._from_checkpoint = False  # this fit restored the composer from a checkpoint
        self._window: Any = None  # the open composer.accumulate(...) context, if any

    # ------------------------------------------------------------------ the composer
    @property
    def composer(self) -> Composer:
        """The composer (built when fitting starts)."""
        if self._composer is None:
            raise RuntimeError(
                "LossRAGModule.composer is built at on_fit_start, once the process group "
                "exists; call trainer.fit(module, ...) first."
            )
        return self._composer

    def build_composer(self) -> Composer:
        """Build the composer (called at ``on_fit_start``); override to customise it."""
        options = dict(self.options)
        trainer = self._trainer
        optimizers = trainer.optimizers if trainer is not None else []
        if options.get("query") is not None and len(optimizers) == 1:
            options["optimizer"] = optimizers[0]
        scaler = getattr(trainer.precision_plugin, "scaler", None) if trainer is not None else None
        if self.kind == "loss" and "scaler" not in options and scaler is not None:
            options["scaler"] = scaler  # precision="16-mixed": a skipped step leaves the state
        return wrap(self.model, self.tasks, self.policy, self.shared, self.trace, **options)

    @property
    def shared(self) -> nn.Module | None:
        """The shared trunk (a submodule of :attr:`model`), or ``None``."""
        return None if self.shared_name is None else self.model.get_submodule(self.shared_name)

    def on_fit_start(self) -> None:
        """Build the composer, carrying over the state of a previous fit or a checkpoint."""
        state = self._restored
        self._from_checkpoint |= state is not None
        if state is None and self._composer is not None:
            state = self._composer.state_dict()
        self._composer = self.build_composer()
        self._closed = False
        self._restored = None
        if state is not None:
            self._restore(state)

    def on_fit_end(self) -> None:
        """Close any open window and the composer (flushes the trace)."""
        self._close_composer()

    def teardown(self, stage: str) -> None:
        """Close the composer also when fitting stopped early or failed."""
        if stage == "fit":
            self._close_composer()

    def _close_composer(self) -> None:
        if self._composer is None or self._closed:
            return
        self._close_window(partial_ok=True)
        self._composer.close()
        self._closed = True

    # ------------------------------------------------------------------ the training step
    def forward(self, x: Any) -> Any:
        """``model(x)``: ``{task name: output}``."""
        return self.model(x)

    def split_batch(self, batch: Any) -> tuple[Any, Mapping[str, Tensor]]:
        """``(model input, {task: target})`` from a batch; by default the batch is that pair."""
        if not (isinstance(batch, Sequence) and len(batch) == 2 and isinstance(batch[1], Mapping)):
            raise TypeError(
                "LossRAGModule: a batch must be (x, {task name: target}); got "
                f"{type(batch).__name__}. Override split_batch() for another layout."
            )
        return batch[0], batch[1]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        """One micro-batch: its weighted loss (loss-based methods, automatic optimisation), or
        its gradients and, at the last micro-batch of a step, the optimizer step (gradient-based
        methods, manual optimisation)."""
        x, targets = self.split_batch(batch)
        n = self._window_length()
        first = self._window is None
        if first:
            self._open_window(n)
        if self.automatic_optimization:
            loss = self.composer.loss(self(x), targets)
            self._log_record(first)
            return loss
        optimizer = self.optimizers()
        if isinstance(optimizer, list):
            raise TypeError(
                "LossRAGModule: a gradient-based method steps one optimizer; "
                f"configure_optimizers returned {len(optimizer)}."
            )
        if first:
            optimizer.zero_grad()
        self.composer.backward(self(x), targets)
        self._log_record(first)
        last_batch = batch_idx + 1 == self.trainer.num_training_batches
        if (batch_idx + 1) % n == 0 or last_batch:
            optimizer.step()  # on_before_optimizer_step closes the window
            self._step_schedulers("step")
        return None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step's micro-batches are complete: close the composer's window."""
        self._close_window(partial_ok=True)

    def on_train_start(self) -> None:
        """A fit resumed from a checkpoint written at an epoch's last step, before the epoch
        ended: that end reaches the method now (Lightning resumes in the next epoch without
        ending it). Only then: a Trainer used again keeps its epoch count for a new module."""
        if self._composer is not None and self._from_checkpoint:
            self._composer.end_epochs_until(self.current_epoch)
        self._from_checkpoint = False

    def on_train_epoch_end(self) -> None:
        """Close any window left open, step epoch schedulers (manual mode) and tell the method
        that an epoch ended (DWA)."""
        self._close_window(partial_ok=True)
        if not self.automatic_optimization:
            self._step_schedulers("epoch")
        if self._composer is not None:
            self._composer.epoch_end()

    def configure_optimizers(self) -> Any:
        """``optimizer(parameters)`` if given, else Adam with ``lr``."""
        params = self.parameters()
        if self.optimizer_factory is not None:
            return self.optimizer_factory(params)
        return torch.optim.Adam(params, lr=self.lr)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the composer's state (method state, random stream, step) in the checkpoint.
        While fitting with ``normalize_targets``, the checkpoint's ``state_dict`` holds the
        heads in the user's units (:meth:`~lossrag.Composer.plain_state_dict`), so that testing,
        predicting or loading it into the plain model gives outputs in the targets' units; the
        normalised heads go beside it, for a resumed fit to continue exactly."""
        if self._composer is None:
            return
        state = self._composer.state_dict()
        if not self._closed:
            heads = self._composer.normalised_heads()
            if heads:
                plain, weights = self._composer.plain_state_dict(), checkpoint["state_dict"]
                for prefix in self._model_prefixes():
                    for key in heads:
                        if prefix + key in weights:
                            weights[prefix + key] = plain[key]
                state[_HEADS_KEY] = heads
        checkpoint[CHECKPOINT_KEY] = state

    def _model_prefixes(self) -> list[str]:
        """Where the composer's model sits in this module's ``state_dict()`` (``"model."``, or
        ``"model._orig_mod."`` for a compiled one; every name, if it is registered twice)."""
        assert self._composer is not None
        module = self._composer.module
        return [f"{n}." for n, m in self.named_modules(remove_duplicate=False) if m is module]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the composer's state (and the normalised heads) when fitting starts."""
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is not None:
            self._restored = state
            if self._composer is not None and not self._closed:
                self._restore(state)
                self._restored = None
                self._from_checkpoint = True

    def _restore(self, state: dict[str, Any]) -> None:
        """Load a checkpoint's composer state into the open composer and put back the heads as
        the composer trains them (normalised), exactly as they were."""
        state = dict(state)
        heads = state.pop(_HEADS_KEY, {})
        self.composer.load_state_dict(state)
        self.composer.load_normalised_heads(heads)

    # ------------------------------------------------------------------ helpers
    def _window_length(self) -> int:
        if self.automatic_optimization:
            return int(self.trainer.accumulate_grad_batches)
        return self.manual_accumulation

    def _open_window(self, n: int) -> None:
        if n == 1:
            return  # each call is its own window
        # Lightning (automatic) divides each micro-batch's loss by n itself; in manual mode
        # the composer writes the gradients, so it divides them.
        self._window = self.composer.accumulate(n, divide=not self.automatic_optimization)
        self._window.__enter__()

    def _close_window(self, partial_ok: bool) -> None:
        window, self._window = self._window, None
        if window is None:
            return
        with warnings.catch_warnings():
            if partial_ok:  # the epoch's last step may have fewer micro-batches, as in Lightning
                warnings.filterwarnings("ignore", message=r"Composer\.accumulate")
            window.__exit__(None, None, None)

    def _log_record(self, first: bool) -> None:
        """Log the weights and losses at the first micro-batch of the optimizer steps whose logs
        Lightning writes: step ``s`` with ``(s + 1) % log_every_n_steps == 0``, written under
        ``s`` (under this module's manual accumulation, Lightning counts micro-batches: under
        the step's last one). At ``s % n == 0`` they were written ``n − 1`` steps late, under
        another step (found by a user trial). A run stopped early (``trainer.should_stop``)
        between those steps does not log its last one; ``log_every_n_steps=0`` logs nothing.
        Reading the record syncs with the device."""
        every = int(getattr(self.trainer, "log_every_n_steps", 50))  # set at run time
        if not first or every <= 0 or (self.trainer.global_step + 1) % every != 0:
            return
        record = self.composer.last_record
        if record is not None:
            self.log_dict(record_metrics(record), on_step=True, on_epoch=False)

    def _step_schedulers(self, interval: str) -> None:
        """Manual optimisation: step the schedulers of ``configure_optimizers`` as Lightning
        does under automatic optimisation (``interval`` and ``frequency``)."""
        for config in self.trainer.lr_scheduler_configs:
            if config.interval != interval:
                continue
            count = self.trainer.global_step if interval == "step" else self.current_epoch + 1
            if count % config.frequency == 0:
                config.scheduler.step()  # type: ignore[call-arg]


def _submodule_name(model: nn.Module, shared: nn.Module | None) -> str | None:
    """The name of ``shared`` inside ``model`` (``""`` for the model itself)."""
    if shared is None:
        return None
    for name, module in model.named_modules():
        if module is shared:
            return name
    raise ValueError(
        f"LossRAGModule: `shared` ({type(shared).__name__}) must be a submodule of `model` "
        f"({type(model).__name__}), e.g. shared=model.trunk."
    )


def record_metrics(record: StepRecord) -> dict[str, float]:
    """``lossrag/weight/<task>`` (tasks whose method gives weights) and ``lossrag/loss/<task>``
    of one record, for ``LightningModule.log_dict``."""
    out = {
        f"lossrag/weight/{task}": w for task, w in record.task_weights().items() if w is not None
    }
    out.update({f"lossrag/loss/{task}": value for task, value in record.losses.items()})
    return out
