"""Each task's current performance on its declared metric, mapped to ``[0, 1]`` (higher is
better), for methods that weigh by performance (``perf``, ``needs_metrics``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lossrag.metrics import evaluate
from lossrag.tasks import Task

__all__ = ["PerformanceMeter"]


class PerformanceMeter:
    """Scores a batch with every task's metric: a score (accuracy, F1) as it is; an error
    (MAE, MSE, RMSE) as ``v_ref / (v_ref + v)`` with ``v_ref`` the task's first positive value
    (:func:`lossrag.weighting.perf.performance_from_metric`)."""

    def __init__(self, tasks: Sequence[Task], policy: str) -> None:
        missing = [t.name for t in tasks if t.metric is None]
        if missing:
            raise ValueError(
                f"wrap: policy {policy!r} weighs tasks by their metric; task(s) "
                f"{', '.join(map(repr, missing))} have none (representation tasks are not scored)."
            )
        self.tasks = list(tasks)
        self.reference: dict[str, float] = {}

    def __call__(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> Tensor:
        """The ``(K,)`` performances of one batch (tasks whose value is not finite: 0.5)."""
        from lossrag.weighting.perf import performance_from_metric

        values = []
        with torch.no_grad():
            for task in self.tasks:
                value = evaluate(task, outputs[task.name].detach().float(), targets[task.name])
                if task.higher_is_better:
                    values.append(performance_from_metric(value, "score"))
                    continue
                if value != value or value == float("inf"):
                    values.append(0.5)
                    continue
                ref = self.reference.setdefault(task.name, value) or 1e-12
                values.append(performance_from_metric(value, "error", ref))
        return torch.tensor(values, dtype=torch.float32)

    def state_dict(self) -> dict[str, float]:
        """The reference values."""
        return dict(self.reference)

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        """Restore :meth:`state_dict`."""
        self.reference = dict(state)
