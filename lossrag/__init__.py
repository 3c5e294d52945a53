"""LossRAG: retrieval-composed loss weighting for multi-task learning in PyTorch.

The public names are imported on first use (PEP 562), so ``import lossrag`` and the ``lossrag``
command line start fast; ``lossrag.wrap`` loads torch and the composer, and a method's solver
(torchjd, FAISS) is loaded only by the method that needs it.

>>> import lossrag
>>> lossrag.Task("shift", kind="regression").metric
'mae'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lossrag.compose import Composer, NonFiniteLossError, wrap
    from lossrag.losses import Loss, LossSpec, registry
    from lossrag.record import StepRecord, Term, read_trace
    from lossrag.tasks import Task

__version__ = "0.1.0"

#: Public name -> the module defining it, imported on first access.
_LAZY: dict[str, str] = {
    "Composer": "lossrag.compose",
    "NonFiniteLossError": "lossrag.compose",
    "wrap": "lossrag.compose",
    "Loss": "lossrag.losses",
    "LossSpec": "lossrag.losses",
    "registry": "lossrag.losses",
    "StepRecord": "lossrag.record",
    "Term": "lossrag.record",
    "read_trace": "lossrag.record",
    "Task": "lossrag.tasks",
}

#: Subpackages and modules reachable as attributes (``lossrag.weighting.UW``), imported on first
#: access as the public names are.
_MODULES = frozenset(
    {
        "bench",
        "compose",
        "context",
        "embed",
        "index",
        "integrations",
        "losses",
        "meta",
        "metrics",
        "models",
        "policy",
        "record",
        "targets",
        "tasks",
        "train",
        "weighting",
    }
)

__all__ = [
    "Composer",
    "Loss",
    "LossSpec",
    "NonFiniteLossError",
    "StepRecord",
    "Task",
    "Term",
    "__version__",
    "read_trace",
    "registry",
    "wrap",
]


def __getattr__(name: str) -> Any:
    """Import the module defining the public name ``name`` (or the submodule ``name``) on first
    access (PEP 562)."""
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The names defined so far and every public name and submodule, imported or not."""
    return sorted({*globals(), *__all__, *_MODULES})
