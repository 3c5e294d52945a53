"""The loss of one term: a library entry applied to a task's output, in the units it expects.

A representation loss acts on the output of ``shared``; a regression loss that is not
homogeneous in the residual (Huber, Cauchy, ...) sees outputs and targets divided by the target's
standard deviation (from the first batch that has one), so its hyper-parameters mean the same
on every problem.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor

from lossrag.index import Entry
from lossrag.losses import Loss, registry
from lossrag.policy.evidence import metric_aligned
from lossrag.policy.rescue import seen_share
from lossrag.tasks import Task

__all__ = ["TermLosses"]

#: Loss families whose value scales as a power of the residual: no standard units needed.
_HOMOGENEOUS = ("squared", "absolute")


class TermLosses:
    """The library entries a policy has met, their loss modules and the targets' scales.

    Attributes:
        entries: Entry id -> library entry (every term and candidate met so far).
        target_scale: Task name -> its target's standard deviation, from the first batch that
            has one.
    """

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.target_scale: dict[str, float] = {}
        self._modules: dict[str, Loss] = {}
        self._aligned: dict[str, bool] = {}

    def module(self, entry_id: str) -> Loss:
        """The loss module of a known entry (built once)."""
        if entry_id not in self._modules:
            entry = self.entries[entry_id]
            self._modules[entry_id] = registry.create(entry.name, **entry.params)
        return self._modules[entry_id]

    def aligned(self, kind: str, entry_id: str) -> bool:
        """Whether a known entry can serve a task of ``kind`` under its metric
        (:func:`lossrag.policy.evidence.metric_aligned`; measured once per entry)."""
        if entry_id not in self._aligned:
            self._aligned[entry_id] = metric_aligned(kind, self.module(entry_id))
        return self._aligned[entry_id]

    def scale(self, task: Task, target: Tensor) -> float:
        """The target's standard deviation, from the first batch that has one (at least two
        samples, not all equal; 1 until then)."""
        if task.name not in self.target_scale:
            values = target.detach().float()
            std = float(values.std()) if len(values) > 1 else math.nan
            if not math.isfinite(std) or std <= 1e-8:
                return 1.0
            self.target_scale[task.name] = std
        return self.target_scale[task.name]

    def seen_share(
        self,
        task: Task,
        entry_ids: list[str],
        outputs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
    ) -> float:
        """:func:`lossrag.policy.rescue.seen_share` of a regression task's ``entry_ids`` on this
        batch, in the target's standard units (as :meth:`loss` gives them)."""
        s = self.scale(task, targets[task.name])
        modules = [self.module(e) for e in entry_ids]
        return seen_share(modules, outputs[task.name] / s, targets[task.name] / s)

    def loss(
        self,
        task: Task,
        entry_id: str,
        outputs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        features: Tensor | None,
    ) -> Tensor:
        """The mean loss of one term (a representation loss on the output of ``shared``; a
        non-homogeneous regression loss in the target's standard units)."""
        if task.kind == "representation":
            if features is None:
                raise ValueError(
                    f"Task {task.name!r} (representation): `shared` produced no output in this "
                    "forward; call model(x) before composer.backward."
                )
            out, tgt = features.flatten(1), targets[task.positives or ""]
        else:
            out, tgt = outputs[task.name], targets[task.name]
            family = registry.spec(self.entries[entry_id].name).family
            if task.kind == "regression" and family not in _HOMOGENEOUS:
                s = self.scale(task, tgt)
                out, tgt = out / s, tgt / s
        try:
            value = self.module(entry_id)(out, tgt)
        except (IndexError, RuntimeError) as err:  # e.g. a class index out of range
            if task.kind == "representation":
                raise
            raise task.loss_failed(outputs[task.name], targets[task.name], err) from err
        return value if value.dim() == 0 else value.mean()
