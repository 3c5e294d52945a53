"""Tasks: one prediction head, its target, its natural loss and its metric."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import Tensor

__all__ = ["KINDS", "METRICS", "NATURAL_LOSS", "Task", "TaskKind"]

TaskKind = Literal["regression", "classification", "multilabel", "representation"]
KINDS: tuple[str, ...] = get_args(TaskKind)

#: Metrics each kind may be scored with, the first being the default.
METRICS: dict[str, tuple[str, ...]] = {
    "regression": ("mae", "mse", "rmse"),
    "classification": ("accuracy", "f1"),
    "multilabel": ("f1", "accuracy"),
    "representation": (),
}

#: The loss a task trains with when none is given.
NATURAL_LOSS: dict[str, str] = {
    "regression": "l2",
    "classification": "ce",
    "multilabel": "bce",
    "representation": "supcon",
}


@dataclass(frozen=True)
class Task:
    """One task of a multi-task model.

    Args:
        name: Key of the task in the model's output dict and in the target dict.
        kind: ``"regression"`` (outputs and targets ``(B,)`` or ``(B, D)`` float),
            ``"classification"`` (logits ``(B, C)``, integer targets ``(B,)`` in ``[0, C)``),
            ``"multilabel"`` (logits ``(B, C)``, targets ``(B, C)`` in ``{0, 1}``) or
            ``"representation"`` (a loss on the output of ``shared``, with the labels of the
            classification task named by ``positives``; it has no output, target or metric).
        num_classes: ``C`` for classification and multilabel tasks.
        metric: How the task is scored: ``mae``/``mse``/``rmse`` (regression) or
            ``accuracy``/``f1`` (classification, multilabel). Defaults to the first for the kind.
        loss: Name of a library loss (``lossrag library list``) or ``None`` for the kind's natural
            loss (``l2``, ``ce``, ``bce``, ``supcon``).
        loss_params: Hyper-parameters of that loss, e.g. ``{"delta": 0.5}`` for ``huber``.
        positives: For ``representation`` tasks, the classification task whose labels define the
            positive pairs.

    >>> Task("digit", kind="classification", num_classes=10).loss
    'ce'
    """

    name: str
    kind: TaskKind
    num_classes: int | None = None
    metric: str | None = None
    loss: str | None = None
    loss_params: dict[str, Any] = field(default_factory=dict)
    positives: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"Task name must be a non-blank string, got {self.name!r}.")
        if self.kind not in KINDS:
            raise ValueError(
                f"Task {self.name!r}: unknown kind {self.kind!r}; "
                f"expected one of {', '.join(KINDS)}."
            )
        self._check_classes()
        allowed = METRICS[self.kind]
        if self.metric is None:
            object.__setattr__(self, "metric", allowed[0] if allowed else None)
        elif self.metric not in allowed:
            raise ValueError(
                f"Task {self.name!r} ({self.kind}): metric {self.metric!r} is not available; "
                f"expected one of {', '.join(allowed) or 'none (the kind is not scored)'}."
            )
        if (self.kind == "representation") != (self.positives is not None):
            raise ValueError(
                f"Task {self.name!r}: `positives` (the classification task giving the labels) is "
                "required for representation tasks and only for them."
            )
        loss = self.loss if self.loss is not None else NATURAL_LOSS[self.kind]
        object.__setattr__(self, "loss", loss)
        from lossrag.losses import registry

        spec = registry.spec(loss)  # raises with close matches for an unknown name
        if self.kind not in spec.kinds:
            raise ValueError(
                f"Task {self.name!r}: loss {loss!r} does not apply to {self.kind} tasks "
                f"(it applies to {', '.join(spec.kinds)})."
            )
        spec.check_params(self.loss_params)
        object.__setattr__(self, "loss_params", dict(self.loss_params))

    def _check_classes(self) -> None:
        needs = self.kind in ("classification", "multilabel")
        # a multilabel task of one label is a binary task with one logit
        least = 2 if self.kind == "classification" else 1
        if needs and (not isinstance(self.num_classes, int) or self.num_classes < least):
            what = "one logit per label" if least == 1 else "use multilabel for one logit"
            raise ValueError(
                f"Task {self.name!r} ({self.kind}): num_classes must be an int >= {least} "
                f"({what}), got {self.num_classes!r}."
            )
        if not needs and self.num_classes is not None:
            raise ValueError(f"Task {self.name!r} ({self.kind}): num_classes is not used; omit it.")

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger value of the task's metric is better (accuracy, f1)."""
        return self.metric in ("accuracy", "f1")

    def loss_failed(self, output: Tensor, target: Tensor, error: Exception) -> ValueError:
        """The error to raise when a loss of this task failed on ``output`` and ``target`` (an
        index out of range, a shape the loss refuses): :meth:`check`'s, naming the bad values,
        where it finds them, else ``error`` with the task's name."""
        self.check(output, target)
        return ValueError(f"Task {self.name!r}: its loss failed: {error}")

    def check_target(self, target: Tensor, where: str = "") -> None:
        """Validate a target without its output (a query batch's, before any forward): a
        tensor of the kind's dtype, class indices in range, 0/1 labels; ``where`` is added to
        the task in the error."""
        name = f"Task {self.name!r} ({self.kind}){where}"
        if not isinstance(target, Tensor):
            raise TypeError(f"{name}: the target must be a tensor, got {type(target).__name__}.")
        if self.kind == "regression" and not target.is_floating_point():
            raise ValueError(f"{name}: expected a float target, found dtype {target.dtype}.")
        if self.kind == "classification":
            _check_indices(name, target, self.num_classes or 0, True)
        elif self.kind == "multilabel":
            _check_labels(name, target, True)

    def check(self, output: Tensor, target: Tensor, *, values: bool = True) -> None:
        """Validate one batch of this task's output and target; raise a ValueError naming the task.

        Checks shapes and dtypes per kind and, with ``values`` (which reads the target back from
        its device), class indices in range and multilabel targets in {0, 1}.
        """
        where = f"Task {self.name!r} ({self.kind})"
        if not isinstance(output, Tensor) or not isinstance(target, Tensor):
            raise TypeError(
                f"{where}: output and target must be tensors, got {type(output).__name__} and "
                f"{type(target).__name__}."
            )
        if not output.is_floating_point():
            raise ValueError(f"{where}: output must be a float tensor, got dtype {output.dtype}.")
        if self.kind == "regression":
            _check_regression(where, output, target)
        elif self.kind == "classification":
            _check_classification(where, output, target, self.num_classes or 0, values)
        elif self.kind == "multilabel":
            _check_multilabel(where, output, target, self.num_classes or 0, values)


def _check_regression(where: str, output: Tensor, target: Tensor) -> None:
    if output.dim() not in (1, 2):
        raise ValueError(f"{where}: expected output (B,) or (B, D), found {tuple(output.shape)}.")
    if target.shape != output.shape:
        raise ValueError(
            f"{where}: target shape {tuple(target.shape)} does not match output shape "
            f"{tuple(output.shape)}; expected both (B,) or both (B, D)."
        )
    if not target.is_floating_point():
        raise ValueError(f"{where}: expected a float target, found dtype {target.dtype}.")


def _check_classification(
    where: str, output: Tensor, target: Tensor, classes: int, values: bool
) -> None:
    if output.dim() != 2 or output.shape[1] != classes:
        raise ValueError(f"{where}: expected logits (B, {classes}), found {tuple(output.shape)}.")
    if target.shape != output.shape[:1]:
        raise ValueError(
            f"{where}: expected target ({output.shape[0]},) of class indices, "
            f"found {tuple(target.shape)}."
        )
    _check_indices(where, target, classes, values)


def _check_indices(where: str, target: Tensor, classes: int, values: bool) -> None:
    if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
        raise ValueError(f"{where}: expected integer class indices, found dtype {target.dtype}.")
    if values and target.numel():
        low, high = (int(v) for v in torch.aminmax(target))  # one device sync
        if low < 0 or high >= classes:
            raise ValueError(
                f"{where}: class indices must lie in [0, {classes}); found values in "
                f"[{low}, {high}]."
            )


def _check_multilabel(
    where: str, output: Tensor, target: Tensor, classes: int, values: bool
) -> None:
    if output.dim() != 2 or output.shape[1] != classes:
        raise ValueError(f"{where}: expected logits (B, {classes}), found {tuple(output.shape)}.")
    if target.shape != output.shape:
        raise ValueError(
            f"{where}: expected target {tuple(output.shape)} of 0/1 labels, "
            f"found {tuple(target.shape)}."
        )
    _check_labels(where, target, values)


def _check_labels(where: str, target: Tensor, values: bool) -> None:
    if values and target.numel() and not bool(((target == 0) | (target == 1)).all()):
        raise ValueError(f"{where}: multilabel targets must be 0 or 1.")
