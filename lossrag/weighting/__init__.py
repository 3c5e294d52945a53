"""Weighting methods: every baseline reachable as ``lossrag.wrap(..., policy=NAME)``.

The registry lists every method without importing it: a method's module (and its solver, e.g.
torchjd with cvxpy) is imported on first use, by :func:`method_class`, :func:`make_method` or an
attribute access such as ``from lossrag.weighting import UW``.

>>> from lossrag.weighting import available
>>> "famo" in available() and "mgda" in available()
True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lossrag.weighting.base import (
    _BUILTIN,
    GradMethod,
    LossMethod,
    Method,
    available,
    make_method,
    method_class,
    register_method,
)

if TYPE_CHECKING:
    from lossrag.weighting.aggregators import (
        IMTLG,
        MGDA,
        AlignedMTL,
        CAGrad,
        ConFIG,
        DualProj,
        FairGrad,
        GradDrop,
        GradVac,
        NashMTL,
        PCGrad,
        UPGrad,
    )
    from lossrag.weighting.autolambda import AutoLambda
    from lossrag.weighting.ew import EW
    from lossrag.weighting.gradnorm import GradNorm, gradnorm_weight_grad
    from lossrag.weighting.metaweighting import MetaWeighting
    from lossrag.weighting.scalarizers import DWA, FAMO, IMTLL, RLW, STCH, UW, GeometricMean

#: Public names defined in a module of this package, imported on first access.
_LAZY: dict[str, str] = {
    **{
        target.partition(":")[2]: target.partition(":")[0]
        for target in _BUILTIN.values()
        if target.startswith("lossrag.weighting.")
    },
    "gradnorm_weight_grad": "lossrag.weighting.gradnorm",
}

__all__ = [
    "DWA",
    "EW",
    "FAMO",
    "IMTLG",
    "IMTLL",
    "MGDA",
    "RLW",
    "STCH",
    "UW",
    "AlignedMTL",
    "AutoLambda",
    "CAGrad",
    "ConFIG",
    "DualProj",
    "FairGrad",
    "GeometricMean",
    "GradDrop",
    "GradMethod",
    "GradNorm",
    "GradVac",
    "LossMethod",
    "MetaWeighting",
    "Method",
    "NashMTL",
    "PCGrad",
    "UPGrad",
    "available",
    "gradnorm_weight_grad",
    "make_method",
    "method_class",
    "register_method",
]


def __getattr__(name: str) -> Any:
    """Import the module defining the public name ``name`` on first access (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The names defined so far and every public name, imported or not."""
    return sorted({*globals(), *__all__})
