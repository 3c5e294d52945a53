"""Hugging Face integration: :class:`LossRAGTrainer`, a ``transformers.Trainer`` whose
``compute_loss`` weighs the tasks with a LossRAG loss-based method
(``pip install "lossrag[huggingface]"``).

The model is any ``torch.nn.Module`` whose ``forward`` takes the batch's input columns as
keyword arguments and returns ``{task name: output}`` (a ``torch.compile``d one hides those
arguments from the Trainer: pass ``TrainingArguments(remove_unused_columns=False)``); each batch
also holds one column per task, named after it, with the targets. ``compute_loss`` takes those
columns out, runs the model on the rest and returns ``composer.loss(outputs, targets)``. The
``gradient_accumulation_steps`` micro-batches of one optimizer step form one composer window
(the method's weights update once per optimizer step; the Trainer divides each micro-batch's
loss itself). Each epoch's end reaches ``composer.epoch_end()`` (DWA, STCH's nadir form; a run
resumed from a checkpoint written at an epoch's last step catches up on that epoch's end).
Evaluation batches give the unweighted sum of the task losses and never update the method. A
checkpoint written while training holds the model with its heads in the targets' units
(``normalize_targets``) and, in :data:`STATE_FILE`, the composer's state and the normalised
heads, which ``train(resume_from_checkpoint=...)`` restores.

Only loss-based methods (EW, UW, DWA, FAMO, ..., the retrieval policies) are supported:
gradient-based ones (MGDA, PCGrad, ...) need one backward per task, which ``compute_loss``
cannot express; :class:`LossRAGTrainer` raises a ``TypeError`` for them (use the Lightning
integration, or a plain loop with ``composer.backward``).

Example (``examples/huggingface_trainer.py`` runs it end to end)::

    from transformers import TrainingArguments
    from lossrag.integrations.huggingface import LossRAGTrainer

    args = TrainingArguments(output_dir=tmp, max_steps=50, use_cpu=True, report_to=[],
                             save_strategy="no")
    trainer = LossRAGTrainer(model=model, args=args, train_dataset=rows,  # rows: dicts
                             tasks=tasks, policy="famo", shared=model.trunk)
    trainer.train()
    trainer.composer.last_record       # the last optimizer step's weights

Unless ``TrainingArguments(label_names=...)`` says otherwise, the task names are the Trainer's
``label_names``: ``remove_unused_columns`` keeps their columns although ``model.forward`` does
not take them, and evaluation passes them to ``compute_loss``. The default data collator renames
a ``label`` or ``label_ids`` column to ``labels``: name the tasks otherwise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lossrag.compose import Composer, wrap
from lossrag.tasks import Task
from lossrag.weighting import Method

try:
    import transformers
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"{__name__} needs transformers: pip install 'lossrag[huggingface]' ({err})"
    ) from err

__all__ = ["STATE_FILE", "LossRAGTrainer"]

#: File of a checkpoint folder that holds the composer's state and the normalised heads.
STATE_FILE = "lossrag_composer.pt"


class _EpochEnd(transformers.TrainerCallback):
    """Tells the composer that a training epoch ended; at an epoch's start, catches up on the
    end of one that a checkpoint written at its last step did not see."""

    def __init__(self, composer: Composer) -> None:
        self.composer = composer

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # the state's epoch is fractional; at an epoch's last step it is a whole number exactly
        self.composer.end_epochs_until(math.floor(state.epoch))

    def on_epoch_end(self, *args: Any, **kwargs: Any) -> None:
        self.composer.epoch_end()


class LossRAGTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` that trains ``tasks`` weighted by ``policy``.

    Args:
        *args: The ``transformers.Trainer`` arguments (``model``, ``args``, ``train_dataset``,
            ...).
        tasks: The tasks, with unique names; each is a column of the batches.
        policy: A loss-based method name, ``"default"``, a policy folder or a configured loss
            :class:`~lossrag.weighting.Method` (as :func:`lossrag.wrap` takes).
        shared: The shared trunk, a submodule of the model.
        trace: Path of a JSONL trace of every step's record.
        wrap_options: The other keyword options of :func:`lossrag.wrap` (``seed``, ...).
        **kwargs: More ``transformers.Trainer`` keyword arguments.

    Attributes:
        composer: The :class:`~lossrag.Composer`, built with the Trainer (after Accelerate has
            set up the process group); closed when :meth:`train` returns.
    """

    def __init__(
        self,
        *args: Any,
        tasks: Sequence[Task],
        policy: str | Method = "ew",
        shared: nn.Module | None = None,
        trace: str | os.PathLike[str] | None = None,
        wrap_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        names = [t.name for t in tasks]
        if self.args.label_names is None:
            # The target columns are the labels: kept by remove_unused_columns, handed to
            # compute_loss in evaluation and returned as label_ids by predict().
            self.label_names = names
        elif self.args.remove_unused_columns and not set(names) <= set(self.label_names):
            raise ValueError(
                f"LossRAGTrainer: TrainingArguments(label_names={self.args.label_names!r}) "
                f"leaves out task column(s) {sorted(set(names) - set(self.label_names))}, which "
                "remove_unused_columns would drop; add them to label_names or set "
                "remove_unused_columns=False."
            )
        if not isinstance(self.model, nn.Module):
            raise TypeError("LossRAGTrainer: pass the model (a torch.nn.Module) as `model=`.")
        self.tasks = list(tasks)
        self.composer: Composer = wrap(
            self.model, self.tasks, policy, shared, trace, **dict(wrap_options or {})
        )
        if self.composer.method.kind != "loss":
            name = self.composer.policy_name
            self.composer.close()
            raise TypeError(
                f"LossRAGTrainer: policy {name!r} is gradient-based (it needs one gradient per "
                "task), which Trainer.compute_loss cannot express; use a loss-based method, the "
                "Lightning integration (lossrag.integrations.lightning) or a plain loop with "
                "composer.backward()."
            )
        self._window: Any = None  # the open composer.accumulate(...) context, if any
        self._training = False  # inside train(): the composer is open
        self.add_callback(_EpochEnd(self.composer))

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """The weighted loss of this batch (``num_items_in_batch`` is not used: task losses are
        per-task means); evaluation batches give the unweighted sum of the task losses."""
        names = {t.name for t in self.tasks}
        missing = sorted(names - set(inputs))
        if missing:
            raise ValueError(
                f"LossRAGTrainer: the batch has no column for task(s) {missing}; its columns are "
                f"{sorted(inputs)} (the default collator renames a 'label' or 'label_ids' "
                "column to 'labels')."
            )
        targets = {k: v for k, v in inputs.items() if k in names}
        features = {k: v for k, v in inputs.items() if k not in names}
        outputs = model(**features)
        if not (model.training and torch.is_grad_enabled()):
            loss = self.composer.term_losses(outputs, targets).sum()
            return (loss, outputs) if return_outputs else loss
        n = int(self.args.gradient_accumulation_steps)
        if n > 1 and self._window is None:
            # Transformers divides each micro-batch's loss by the accumulation steps itself.
            self._window = self.composer.accumulate(n, divide=False)
            self._window.__enter__()
        loss = self.composer.loss(outputs, targets)
        if self._window is not None and self.accelerator.sync_gradients:
            self._close_window()  # the last micro-batch of this optimizer step
        return (loss, outputs) if return_outputs else loss

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """``transformers.Trainer.train``, then close the composer (flushes the trace)."""
        self._training = True
        try:
            return super().train(*args, **kwargs)
        finally:
            self._training = False
            self._close_window()
            self.composer.close()

    def _save(
        self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None
    ) -> None:
        """Save the model as the Trainer does, with the heads in the targets' units
        (``composer.plain_state_dict()``); while training (a checkpoint), also the composer's
        state and the normalised heads in :data:`STATE_FILE`, for a resumed run to continue."""
        heads: dict[str, Tensor] = {}
        plain = state_dict is None and self._training
        if plain:
            heads = self.composer.normalised_heads()
            assert self.model is not None
            names = {id(m): n for n, m in self.model.named_modules()}  # a compiled model's too
            name = names[id(self.composer.module)]
            prefix = f"{name}." if name else ""
            state_dict = {prefix + k: v for k, v in self.composer.plain_state_dict().items()}
        super()._save(output_dir, state_dict)
        if self._training and self.args.should_save:
            folder = str(output_dir if output_dir is not None else self.args.output_dir)
            state = {"composer": self.composer.state_dict(), "heads": heads, "plain": plain}
            torch.save(state, os.path.join(folder, STATE_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Load a checkpoint's model as the Trainer does, then the composer's state and the
        normalised heads it saved (:meth:`_save`)."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, STATE_FILE)
        if not os.path.isfile(path):
            return
        device = next(self.composer.module.parameters()).device
        state = torch.load(path, map_location=device)
        self.composer.load_state_dict(state["composer"])
        self.composer.load_normalised_heads(state["heads"])

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: a best checkpoint that :meth:`_save` wrote holds the
        plain model, so the composer closes (its heads back in the targets' units) before the
        Trainer loads it; one the Trainer's engine wrote itself (DeepSpeed, FSDP) holds the
        normalised heads, which the composer folds when it closes after training."""
        best = self.state.best_model_checkpoint
        path = os.path.join(best, STATE_FILE) if best else ""
        if os.path.isfile(path) and torch.load(path, map_location="cpu").get("plain", False):
            self._training = False
            self._close_window()
            self.composer.close()
        super()._load_best_model()

    def _close_window(self) -> None:
        window, self._window = self._window, None
        if window is None:
            return
        window.__exit__(None, None, None)  # undivided: a short last window needs no warning
