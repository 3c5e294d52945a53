"""Query objectives aligned with each task's declared metric.

Online meta-adaptation (:mod:`lossrag.meta.online`) scores the candidate losses by what they do
to a loss on held-out batches. Taking the task's *natural* loss there would ask which weighting
lowers held-out cross-entropy or squared error, while the user scores the task by accuracy, F1
or MAE: a loss that trades a worse held-out cross-entropy for more correct labels (label
smoothing, GCE) would look harmful. So each task's query loss is a smooth surrogate of its
metric:

====================  ===========  =========================================================
kind                  metric       query objective
====================  ===========  =========================================================
regression            ``mae``      mean ``|y − t|``
regression            ``mse``,     mean ``(y − t)²`` (minimising the MSE minimises its root)
                      ``rmse``
classification        ``accuracy`` mean ``1 − p_t``, the expected 0-1 error of the softmax
classification        ``f1``       ``1 −`` soft macro-F1 over the batch's classes,
                                   ``2·Σ p_k y_k / (Σ p_k + Σ y_k)`` per class ``k``
multilabel            ``accuracy`` mean ``|σ(z) − y|``, the expected share of wrong labels
multilabel            ``f1``       ``1 −`` soft micro-F1 smoothed by 1,
                                   ``(2·Σ σ(z)·y + 1) / (Σ σ(z) + Σ y + 1)``
====================  ===========  =========================================================

A task whose kind and metric have no entry (:func:`aligned` returns ``None``) keeps its
natural loss as its query loss, and the meta-step's record says so.

>>> import torch
>>> from lossrag import Task
>>> objective = aligned(Task("digit", kind="classification", num_classes=3))
>>> logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
>>> round(float(objective(logits, torch.tensor([0, 2]))), 3)  # one of two labels right
0.5
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lossrag.losses._checks import residual
from lossrag.tasks import Task

__all__ = ["Objective", "aligned"]

#: A query objective: ``(output, target) -> scalar``, differentiable in ``output``.
Objective = Callable[[Tensor, Tensor], Tensor]


def _mae(output: Tensor, target: Tensor) -> Tensor:
    return residual("query objective (mae)", output.float(), target.float()).abs().mean()


def _mse(output: Tensor, target: Tensor) -> Tensor:
    return residual("query objective (mse)", output.float(), target.float()).square().mean()


def _error(output: Tensor, target: Tensor) -> Tensor:
    p = output.float().softmax(-1)
    return 1 - p.gather(1, target.long().view(-1, 1)).mean()


def _macro_f1(output: Tensor, target: Tensor) -> Tensor:
    p = output.float().softmax(-1)
    y = torch.nn.functional.one_hot(target.long(), p.shape[1]).to(p.dtype)
    present = y.sum(0) > 0  # a class absent from the batch has no F1 to lower
    f1 = 2 * (p * y).sum(0) / (p.sum(0) + y.sum(0)).clamp_min(1e-8)
    return 1 - f1[present].mean()


def _label_error(output: Tensor, target: Tensor) -> Tensor:
    return (output.float().sigmoid() - target.float()).abs().mean()


def _micro_f1(output: Tensor, target: Tensor) -> Tensor:
    p, y = output.float().sigmoid(), target.float()
    # smoothed by 1 (Dice): a batch without positives is best with no predicted positives
    return 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)


_ALIGNED: dict[tuple[str, str], Objective] = {
    ("regression", "mae"): _mae,
    ("regression", "mse"): _mse,
    ("regression", "rmse"): _mse,
    ("classification", "accuracy"): _error,
    ("classification", "f1"): _macro_f1,
    ("multilabel", "accuracy"): _label_error,
    ("multilabel", "f1"): _micro_f1,
}


def aligned(task: Task) -> Objective | None:
    """The query objective aligned with ``task``'s metric (see the module), or ``None`` where
    its kind and metric have none."""
    return _ALIGNED.get((task.kind, str(task.metric)))
