"""Weighting methods: every baseline reachable as ``lossrag.wrap(..., policy=NAME)``.

>>> from lossrag.weighting import available
>>> "famo" in available() and "mgda" in available()
True
"""

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
from lossrag.weighting.base import (
    GradMethod,
    LossMethod,
    Method,
    available,
    make_method,
    method_class,
    register_method,
)
from lossrag.weighting.gradnorm import GradNorm, gradnorm_weight_grad
from lossrag.weighting.metaweighting import MetaWeighting
from lossrag.weighting.scalarizers import DWA, EW, FAMO, IMTLL, RLW, STCH, UW, GeometricMean

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
