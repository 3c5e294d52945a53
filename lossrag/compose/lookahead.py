"""Forwards the composer makes on its own: FAMO's re-evaluation of the last batches after the
optimizer step, and the look-ahead context of the query-learning baselines. None of them writes
into the live model: parameters and buffers are passed with ``torch.func.functional_call``."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lossrag.meta.hypergrad import Functional
from lossrag.meta.online import MetaContext, QueryStream

__all__ = ["Batch", "copy_tree", "meta_context", "rerun", "side_state"]

#: ``((args, kwargs), targets)``: a training batch as the model received it.
Batch = tuple[tuple[tuple[Any, ...], dict[str, Any]], dict[str, Tensor]]
#: ``(outputs, targets) -> (K,) term losses``.
LossFn = Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], Tensor]


def copy_tree(value: Any) -> Any:
    """Detached copies of the tensors in (nested tuples, lists and dicts of) ``value``: a loader
    that reuses its buffers must not change a batch kept for later."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, tuple):
        return tuple(copy_tree(v) for v in value)
    if isinstance(value, list):
        return [copy_tree(v) for v in value]
    if isinstance(value, dict):
        return {k: copy_tree(v) for k, v in value.items()}
    return value


def side_state(module: nn.Module) -> dict[str, Tensor]:
    """The module's live parameters and copies of its buffers, for a ``functional_call`` that
    must not write running statistics into the live model."""
    state: dict[str, Tensor] = dict(module.named_parameters())
    state.update({n: b.clone() for n, b in module.named_buffers()})
    return state


def rerun(module: nn.Module, batches: Sequence[Batch], losses: LossFn) -> Tensor:
    """The mean term losses of ``batches`` at the module's current parameters: no-grad forwards
    on cloned buffers (running statistics of the live model untouched) with the global random
    state left as it was."""
    state = side_state(module)
    total: Tensor | None = None
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for (args, kwargs), targets in batches:
            outputs = torch.func.functional_call(module, state, args, kwargs)
            value = losses(outputs, targets)
            total = value if total is None else total + value
    assert total is not None, "rerun needs at least one batch"
    return total / len(batches)


def meta_context(
    module: nn.Module,
    losses: Tensor,
    batch: Batch,
    term_losses: LossFn,
    query: QueryStream,
    query_index: Sequence[int],
    optimizer: torch.optim.Optimizer | None,
) -> MetaContext:
    """The look-ahead context of a query-learning baseline (Auto-Lambda, MetaWeighting)."""
    inputs, _ = batch

    def terms(call: Any, item: Any) -> Tensor:
        (args, kwargs), y = item
        return term_losses(call(*args, **kwargs), y)

    def query_terms(call: Any, item: Any) -> Tensor:
        x, y = item
        return term_losses(call(x), y)

    def gradients(
        params: dict[str, Tensor], summed: bool = False
    ) -> tuple[list[dict[str, Tensor]] | None, float]:
        with torch.enable_grad():
            values = Functional(module, query_terms)(params, query.next(like=inputs))
            values = values[list(query_index)]
        total = float(values.detach().sum())
        if not math.isfinite(total):
            return None, total
        objectives = [values.sum()] if summed else list(values)
        rows = [
            _named(
                params,
                torch.autograd.grad(v, list(params.values()), retain_graph=True, allow_unused=True),
            )
            for v in objectives
        ]
        return rows, total

    def gradient(params: dict[str, Tensor]) -> tuple[dict[str, Tensor] | None, float]:
        rows, total = gradients(params, summed=True)
        return (None if rows is None else rows[0]), total

    return MetaContext(
        named={n: p for n, p in module.named_parameters() if p.requires_grad},
        losses=losses,
        terms=Functional(module, terms),
        batch=batch,
        optimizer=optimizer,
        query_gradient=gradient,
        query_gradients=gradients,
    )


def _named(params: Mapping[str, Tensor], grads: Sequence[Tensor | None]) -> dict[str, Tensor]:
    """Gradients by parameter name, zeros where nothing reached."""
    return {
        n: torch.zeros_like(p) if g is None else g
        for (n, p), g in zip(params.items(), grads, strict=True)
    }
