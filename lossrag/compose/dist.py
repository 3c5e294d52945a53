"""Agreement across data-parallel ranks: the statistics a method learns from are all-reduced
so that every rank computes bit-identical weights, and a mismatched configuration is an error at
the first step instead of a hang."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Sync", "compiled_in_place", "is_compiled", "unwrap"]


class Sync:
    """Reductions over the default process group; the identity in a single process.

    ``world`` is read once, when the composer is made: build the composer after
    ``torch.distributed.init_process_group``.
    """

    def __init__(self) -> None:
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank() if self.world > 1 else 0
        self.checked = self.world == 1
        #: Floats all-reduced so far (the communication volume, for benchmarks).
        self.volume = 0

    @property
    def active(self) -> bool:
        """Whether there is more than one rank."""
        return self.world > 1

    def mean(self, value: Tensor) -> Tensor:
        """The mean of ``value`` over ranks (a new tensor; ``value`` is not modified)."""
        return value if self.world == 1 else self.sum(value) / self.world

    def sum(self, value: Tensor) -> Tensor:
        """The sum of ``value`` over ranks (a new tensor; ``value`` is not modified)."""
        if self.world == 1:
            return value
        out = value.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        self.volume += out.numel()
        return out

    def check(self, signature: dict[str, Any]) -> None:
        """Raise on every rank if the ranks run different configurations (tasks, policy, world
        size); done once, at the first step."""
        if self.checked:
            return
        self.checked = True
        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, signature)
        for rank, theirs in enumerate(everyone):
            if theirs != signature:
                diff = sorted(k for k in signature if theirs.get(k) != signature[k])
                raise ValueError(
                    f"Composer: rank {self.rank} and rank {rank} are configured differently "
                    f"({', '.join(f'{k}: {signature[k]!r} vs {theirs.get(k)!r}' for k in diff)}"
                    "); every rank must wrap the same tasks with the same policy and options."
                )

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (pickled), in rank order."""
        if self.world == 1:
            return [value]
        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, value)
        return everyone

    def share(self, state: Any) -> Any:
        """Rank 0's ``state`` on every rank (pickled broadcast)."""
        if self.world == 1:
            return state
        box = [state if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _layers(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` and each module it wraps (DDP's ``module``, ``torch.compile``'s
    ``_orig_mod``), outermost first."""
    while True:
        yield model
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, torch.nn.Module):
            model = inner
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and ``torch.compile`` wrappers."""
    *_, plain = _layers(model)
    return plain


def compiled_in_place(model: torch.nn.Module) -> bool:
    """Whether ``model`` (or a wrapper in it) was compiled in place, by ``model.compile()``."""
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in _layers(model))


def is_compiled(model: torch.nn.Module) -> bool:
    """Whether ``model`` (or a wrapper in it) is a ``torch.compile`` module."""
    return any(isinstance(getattr(m, "_orig_mod", None), torch.nn.Module) for m in _layers(model))
