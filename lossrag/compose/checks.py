"""Checks of what ``wrap`` and the training step are given: errors name the task or argument
and what was expected, and are raised before anything changes."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lossrag.tasks import Task

__all__ = [
    "check_batch",
    "check_compiled",
    "check_not_empty",
    "check_shared",
    "check_tasks",
    "last_layer",
    "query_index",
    "warn_raw_targets",
]


def check_tasks(tasks: Sequence[Task]) -> list[Task]:
    """The tasks as a list: non-empty, all ``Task``, unique names, valid ``positives``."""
    tasks = list(tasks)
    if not tasks:
        raise ValueError("wrap: `tasks` is empty; pass at least one lossrag.Task.")
    for t in tasks:
        if not isinstance(t, Task):
            raise TypeError(f"wrap: every task must be a lossrag.Task, got {type(t).__name__}.")
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"wrap: task names must be unique; repeated: {', '.join(dupes)}.")
    kinds = {t.name: t.kind for t in tasks}
    for t in tasks:
        if t.positives is not None and kinds.get(t.positives) != "classification":
            raise ValueError(
                f"Task {t.name!r}: positives={t.positives!r} must name a classification task of "
                f"this model (classification tasks: "
                f"{', '.join(n for n, k in kinds.items() if k == 'classification') or 'none'})."
            )
    return tasks


def query_index(tasks: Sequence[Task], query_tasks: Sequence[str] | None) -> list[int]:
    """Positions of the tasks whose query losses the meta-step lowers."""
    names = [t.name for t in tasks if t.kind != "representation"]
    if query_tasks is None:
        return [i for i, t in enumerate(tasks) if t.name in names]
    unknown = [n for n in query_tasks if n not in names]
    if unknown or not query_tasks:
        raise ValueError(
            f"wrap: query_tasks must name at least one of the non-representation tasks "
            f"({', '.join(names)}); got {list(query_tasks)!r}."
        )
    return [i for i, t in enumerate(tasks) if t.name in query_tasks]


def check_shared(
    model: nn.Module, shared: nn.Module | None, needed_by: str | None
) -> nn.Module | None:
    """``shared`` if it is a submodule holding trainable parameters of ``model``; ``needed_by``
    says what needs it (``None``: nothing does, and it may be left out)."""
    if shared is None:
        if needed_by is not None:
            raise ValueError(
                "wrap: `shared=` (the shared trunk, e.g. shared=model.trunk) is needed: "
                f"{needed_by}."
            )
        return None
    if not isinstance(shared, nn.Module):
        raise TypeError(f"wrap: `shared` must be an nn.Module, got {type(shared).__name__}.")
    own = {id(p) for p in model.parameters()}
    trainable = [p for p in shared.parameters() if p.requires_grad]
    if not trainable or any(id(p) not in own for p in trainable):
        raise ValueError(
            "wrap: `shared` must hold trainable parameters of `model` (a submodule such as "
            "model.trunk); the module given has "
            + ("none." if not trainable else "parameters that are not the model's.")
        )
    return shared


def last_layer(shared: nn.Module | None) -> list[nn.Parameter]:
    """Trainable parameters of the last submodule of ``shared`` that owns any (GradNorm's W)."""
    if shared is None:
        return []
    last: list[nn.Parameter] = []
    for module in shared.modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if own:
            last = own
    return last


def check_batch(
    tasks: Sequence[Task],
    outputs: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    values: bool = True,
) -> None:
    """Outputs and targets hold exactly the head tasks, with valid shapes and a graph; with
    ``values``, class indices and 0/1 labels too (a read from the device)."""
    if not isinstance(outputs, Mapping) or not isinstance(targets, Mapping):
        raise TypeError(
            "Composer: outputs and targets must be dicts {task name: tensor}, got "
            f"{type(outputs).__name__} and {type(targets).__name__}."
        )
    heads = {t.name for t in tasks if t.kind != "representation"}
    _same_keys("outputs", set(outputs), heads)
    _same_keys("targets", set(targets), heads)
    for task in tasks:
        if task.kind != "representation":
            task.check(outputs[task.name], targets[task.name], values=values)
            if not outputs[task.name].requires_grad:
                raise ValueError(
                    f"Task {task.name!r}: its output does not require grad (computed under "
                    "torch.no_grad() or detached?); nothing could be trained."
                )


def check_not_empty(targets: Mapping[str, Tensor]) -> None:
    """Refuse a batch of no samples (its losses would be the NaN of an empty mean, a skipped
    step said to be non-finite). Single-process only: under DDP one rank's error would leave
    the others waiting, and there the step is skipped on every rank instead."""
    for name, target in targets.items():
        if isinstance(target, Tensor) and target.dim() > 0 and len(target) == 0:
            raise ValueError(
                f"Task {name!r}: the batch holds no samples (its targets have 0 rows); skip "
                "empty batches before composer.loss/backward."
            )


def check_compiled(outputs: Mapping[str, Tensor], policy: str) -> None:
    """Refuse outputs of a ``torch.compile``'d model given to a composer that wraps the
    uncompiled one, for a method that reaches into the model's graph (the shared features, or
    several backward passes): it would fail in autograd with an error that names neither."""
    for name, output in outputs.items():
        if type(output.grad_fn).__name__ == "CompiledFunctionBackward":
            raise ValueError(
                f"Composer: the output of task {name!r} comes from a torch.compile'd model, but "
                f"wrap() was given the uncompiled one; policy {policy!r} needs to know (it takes "
                "the shared features or several backward passes through the model's graph). "
                "Compile first, then wrap the compiled model: `model = torch.compile(model)`, "
                "`lossrag.wrap(model, ...)`."
            )


def warn_raw_targets(
    tasks: Sequence[Task], targets: Mapping[str, Tensor], policy: str, scale_free: bool = False
) -> None:
    """Warn, naming each, of the regression tasks whose first batch is far from standard units
    (:func:`lossrag.targets.far_from_unit`) when nothing normalises them: their loss then
    weighs by their scale against the other tasks' (a user trial's target in the hundreds,
    under EW, took every class task down to chance). Under a method that divides each loss by
    its level (``scale_free``) the scale cancels: only targets large in size or offset are
    warned of, as predictions that far from 0 take the optimizer many steps to reach (a test's
    price target, about 1000, still had an MAE of 990 to 1000 after 300 Adam steps under FAMO,
    the geometric mean or the LossRAG policy; 923 under EW). Reads the batch on the host,
    once."""
    from lossrag.targets import far_above_unit, far_from_unit

    for task in tasks:
        t = targets.get(task.name)
        if task.kind != "regression" or t is None or t.numel() < 2:
            continue
        rows = t.detach().cpu().to(torch.float64).reshape(t.shape[0], -1)
        rows = rows[torch.isfinite(rows).all(1)]  # a NaN target says nothing of the scale
        if rows.shape[0] < 2:
            continue
        mu, sigma = float(rows.mean(0).pow(2).mean().sqrt()), float(rows.var(0).mean().sqrt())
        if not far_from_unit(mu, sigma):
            continue
        if not scale_free:
            effect = ", so its loss weighs by their scale against the other tasks'"
        elif far_above_unit(mu, sigma):
            effect = (
                ": it divides each loss by its level, so their scale does not weigh against "
                "the other tasks', but predictions that far from 0 take the optimizer many "
                "steps to reach"
            )
        else:  # small targets: nothing that weighting or reaching them would suffer from
            continue
        warnings.warn(
            f"Task {task.name!r}: its targets are far from standard units (first batch: "
            f"mean {mu:.4g}, std {sigma:.4g}) and policy {policy!r} leaves them as they "
            f"are{effect}. Pass normalize_targets=True (or 'auto') to train on standardised "
            "targets, predictions staying in your units, or normalize_targets=False to keep "
            "them.",
            stacklevel=5,
        )


def _same_keys(what: str, found: set[str], expected: set[str]) -> None:
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing task(s) {', '.join(map(repr, missing))}")
        if extra:
            parts.append(f"unknown key(s) {', '.join(map(repr, extra))}")
        raise ValueError(
            f"Composer: {what} {' and '.join(parts)}; expected exactly "
            f"{', '.join(map(repr, sorted(expected)))}."
        )
