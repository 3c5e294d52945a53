"""Task metrics: ``mae``, ``mse``, ``rmse`` (regression), ``accuracy`` and ``f1``.

``f1`` is macro-averaged over classes for classification and micro-averaged over all labels for
multilabel tasks; multilabel ``accuracy`` is the fraction of correct labels (logit > 0 is 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lossrag.tasks import Task

__all__ = ["accuracy", "evaluate", "f1", "mae", "mse", "rmse"]


def mae(output: Tensor, target: Tensor) -> float:
    """Mean absolute error over all elements."""
    return float((output.float() - target.float()).abs().mean())


def mse(output: Tensor, target: Tensor) -> float:
    """Mean squared error over all elements."""
    return float((output.float() - target.float()).pow(2).mean())


def rmse(output: Tensor, target: Tensor) -> float:
    """Root mean squared error over all elements."""
    return mse(output, target) ** 0.5


def _predict(output: Tensor, kind: str) -> Tensor:
    return output.argmax(dim=1) if kind == "classification" else (output > 0).long()


def accuracy(output: Tensor, target: Tensor, kind: str = "classification") -> float:
    """Fraction of correct predictions (argmax of logits; multilabel: per label, logit > 0)."""
    return float((_predict(output, kind) == target.long()).float().mean())


def f1(output: Tensor, target: Tensor, kind: str = "classification") -> float:
    """Macro F1 over classes (classification) or micro F1 over labels (multilabel)."""
    pred, target = _predict(output, kind), target.long()
    if kind == "multilabel":
        tp = float(((pred == 1) & (target == 1)).sum())
        denom = float((pred == 1).sum() + (target == 1).sum())
        return 2 * tp / denom if denom else 1.0
    scores = []
    for c in torch.unique(torch.cat([pred, target])).tolist():
        tp = float(((pred == c) & (target == c)).sum())
        denom = float((pred == c).sum() + (target == c).sum())
        scores.append(2 * tp / denom if denom else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def evaluate(task: Task, output: Tensor, target: Tensor) -> float:
    """Score ``output`` against ``target`` with ``task.metric``."""
    if task.metric in ("mae", "mse", "rmse"):
        return {"mae": mae, "mse": mse, "rmse": rmse}[task.metric](output, target)
    if task.metric == "accuracy":
        return accuracy(output, target, task.kind)
    if task.metric == "f1":
        return f1(output, target, task.kind)
    raise ValueError(f"Task {task.name!r}: it has no metric (kind {task.kind}).")
