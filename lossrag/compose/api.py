"""``lossrag.wrap``: the one entry point that puts a weighting method around a model."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch import nn

from lossrag.compose.composer import Composer
from lossrag.compose.options import parse_options
from lossrag.tasks import Task
from lossrag.weighting.base import Method

__all__ = ["wrap"]


def wrap(
    model: nn.Module,
    tasks: Sequence[Task],
    policy: str | os.PathLike[str] | Method = "ew",
    shared: nn.Module | None = None,
    trace: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Composer:
    """Wrap ``model`` so that one call per batch trains all ``tasks`` at once.

    Args:
        model: The multi-task model; ``model(x)`` returns ``{task name: output}``. It may be
            wrapped in ``DistributedDataParallel`` or ``torch.compile`` (compile first, then
            wrap the compiled model).
        tasks: The tasks, with unique names.
        policy: ``"default"`` (the shipped meta-trained policy) or the path of a policy folder
            (a string or ``os.PathLike``; it trains with the target normalisation it was
            trained with, ``normalize_targets="auto"`` for ``lossrag train``'s);
            ``"lossrag"`` (the retrieval policy with its untrained prior); a weighting method
            name (``lossrag.weighting.available()``: ``ew``, ``uw``, ``dwa``, ``famo``, ``rlw``,
            ``gradnorm``, ``mgda``, ``pcgrad``, ``cagrad``, ``nashmtl``, ``imtlg``, ``upgrad``,
            ``alignedmtl``, ``imtll``, ``geometricmean``, ``stch``, ...) or a configured method
            object such as ``lossrag.weighting.UW(lr=1e-2)``.
        shared: The shared trunk, a submodule of ``model``. Gradient-based methods work on its
            parameters, GradNorm on its last layer, representation losses and the retrieval
            policies' context on its output.
        trace: Path of a JSONL file that receives every :class:`~lossrag.StepRecord` (under
            DDP, rank 0 writes it: every rank's records agree; give every rank the same path).
        **options: The keyword options of :class:`lossrag.compose.Options` (``seed``,
            ``max_skips``, ``query``, ``meta_every``, ``meta_objective``, ``optimizer``,
            ``query_tasks``, ``query_objective``, ``scaler``, ``trace_every``,
            ``trace_append``, ``normalize_targets``); an unknown one is an error naming the
            closest.

    Loss-based methods: ``loss = composer.loss(model(x), y)`` is a scalar to call ``backward()``
    on (under DDP, AMP's ``GradScaler`` or Lightning as usual). Every method:
    ``composer.backward(model(x), y)`` fills ``.grad`` and returns the step's record.
    DWA weighs by epoch-average losses and STCH's nadir form counts its warm-up in epochs: call
    ``composer.epoch_end()`` at the end of each epoch (or build them with
    ``period=steps_per_epoch``, e.g. ``lossrag.weighting.DWA(period=...)``).

    >>> import torch, lossrag
    >>> from lossrag.models import MultiTaskMLP
    >>> tasks = [lossrag.Task("a", kind="regression"), lossrag.Task("b", kind="regression")]
    >>> model = MultiTaskMLP(3, [8], tasks)
    >>> composer = lossrag.wrap(model, tasks, policy="ew", shared=model.trunk)
    >>> x, y = torch.randn(4, 3), {"a": torch.randn(4), "b": torch.randn(4)}
    >>> record = composer.backward(model(x), y)
    >>> [t.weight for t in record.terms]
    [1.0, 1.0]
    >>> composer.loss(model(x), y).backward()
    """
    return Composer(model, tasks, policy, shared, trace, parse_options(options))
