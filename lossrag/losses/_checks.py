"""Input checks and small numerical helpers shared by the loss functions.

The checks only look at shapes and dtypes (no values), so they never synchronise a GPU. Value checks
(class indices in range, 0/1 multilabel targets) belong to :meth:`lossrag.tasks.Task.check`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "binary_targets",
    "class_targets",
    "features_labels",
    "per_sample",
    "residual",
    "safe_pow",
    "softplus",
]


def _require_float(loss: str, what: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"Loss {loss!r}: {what} must be a tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise ValueError(f"Loss {loss!r}: {what} must be a float tensor, got dtype {x.dtype}.")


def _require_integer(loss: str, what: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"Loss {loss!r}: {what} must be a tensor, got {type(x).__name__}.")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"Loss {loss!r}: {what} must hold integer labels, got dtype {x.dtype}.")


def residual(loss: str, output: Tensor, target: Tensor) -> Tensor:
    """Return ``output - target`` after checking both are float and of one shape ``(B, ...)``."""
    _require_float(loss, "output", output)
    _require_float(loss, "target", target)
    if output.dim() == 0 or output.shape != target.shape:
        raise ValueError(
            f"Loss {loss!r}: expected output and target of one shape, (B,) or (B, D); got "
            f"{tuple(output.shape)} and {tuple(target.shape)}."
        )
    return output - target.to(output.dtype)


def per_sample(x: Tensor) -> Tensor:
    """Mean over every dimension but the first: ``(B, ...)`` -> ``(B,)``."""
    return x if x.dim() == 1 else x.flatten(1).mean(dim=1)


def class_targets(loss: str, logits: Tensor, target: Tensor) -> Tensor:
    """Check logits ``(B, C >= 2)`` and integer targets ``(B,)``; return ``(B, 1)`` targets."""
    _require_float(loss, "logits", logits)
    _require_integer(loss, "target", target)
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(
            f"Loss {loss!r}: expected logits (B, C) with C >= 2, got {tuple(logits.shape)}."
        )
    if target.shape != logits.shape[:1]:
        raise ValueError(
            f"Loss {loss!r}: expected target ({logits.shape[0]},) of class indices, "
            f"got {tuple(target.shape)}."
        )
    return target.long().unsqueeze(1)


def binary_targets(loss: str, logits: Tensor, target: Tensor) -> Tensor:
    """Check logits ``(B, C)`` and 0/1 targets of that shape; return targets in logits' dtype."""
    _require_float(loss, "logits", logits)
    if not isinstance(target, Tensor):
        raise TypeError(f"Loss {loss!r}: target must be a tensor, got {type(target).__name__}.")
    if logits.dim() != 2 or target.shape != logits.shape:
        raise ValueError(
            f"Loss {loss!r}: expected logits (B, C) and 0/1 targets of the same shape; got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}."
        )
    return target.to(logits.dtype)


def features_labels(loss: str, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Check features ``(B, ...)`` and integer labels ``(B,)``; return features as ``(B, F)``."""
    _require_float(loss, "features", features)
    _require_integer(loss, "labels", labels)
    if features.dim() == 0 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"Loss {loss!r}: expected features (B, ...) and labels (B,); got "
            f"{tuple(features.shape)} and {tuple(labels.shape)}."
        )
    return features.reshape(features.shape[0], -1), labels


def safe_pow(x: Tensor, exponent: float) -> Tensor:
    """``x ** exponent`` for ``x >= 0`` whose gradient is 0 (not NaN) where ``x == 0``."""
    if exponent == 0:
        return torch.ones_like(x)
    positive = x > 0
    base = torch.where(positive, x, torch.ones_like(x))
    return torch.where(positive, base.pow(exponent), torch.zeros_like(x))


def softplus(x: Tensor) -> Tensor:
    """``log(1 + exp(x))`` without overflow and without ``F.softplus``'s linear cut-off at 20."""
    return torch.logaddexp(x, torch.zeros_like(x))
