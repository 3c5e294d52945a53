"""``Loss``: the thin ``nn.Module`` shell around a pure loss function and its validated card."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from lossrag.losses.spec import LossSpec

__all__ = ["Loss"]

#: Output dtypes a loss upcasts to float32 before computing (autocast's fp16 and bf16).
_LOW_PRECISION = (torch.float16, torch.bfloat16)


class Loss(nn.Module):
    """A candidate loss with fixed hyper-parameters: ``loss(output, target)`` -> per-sample values.

    Usually built by ``registry.create(name, **params)``. The result is ``(B,)``, or a 0-dim tensor
    for a loss whose card says ``per_batch``; reduction is left to the caller.

    Args:
        spec: The loss card.
        fn: The pure function ``fn(output, target, **params)``.
        params: Hyper-parameters, validated against the card; missing ones take their default.
    """

    def __init__(
        self, spec: LossSpec, fn: Callable[..., Tensor], params: Mapping[str, float] | None = None
    ) -> None:
        super().__init__()
        self.spec = spec
        self.fn = fn
        self.params: dict[str, float] = spec.check_params(params or {})

    @property
    def name(self) -> str:
        """The loss's registry name."""
        return self.spec.name

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        """Per-sample losses ``(B,)`` (or a 0-dim tensor for a per-batch loss). An fp16 or bf16
        output (under autocast) is upcast to float32 first, as autocast does for torch's own
        losses, so the losses come out in float32: a residual of targets in the hundreds would
        overflow fp16, and bf16 would round the targets themselves. (Under autocast a matrix
        product inside a loss, as in the representation losses, still runs in its precision.)"""
        if output.dtype in _LOW_PRECISION:
            output = output.float()
        return self.fn(output, target, **self.params)

    def extra_repr(self) -> str:
        """``name`` and hyper-parameters, shown in ``repr``."""
        return ", ".join([self.name, *(f"{k}={v:g}" for k, v in self.params.items())])
