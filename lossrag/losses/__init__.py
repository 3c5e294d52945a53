"""The loss library: pure per-sample loss functions, their cards and a registry.

>>> import torch
>>> from lossrag.losses import registry
>>> loss = registry.create("huber", delta=0.5)
>>> loss(torch.tensor([0.0, 2.0]), torch.tensor([0.25, 0.0]))
tensor([0.0312, 0.8750])
>>> registry.list("focal*")
['focal', 'focal_bce']
>>> registry.spec("focal").params["gamma"].range_text
'[0, inf)'
"""

from lossrag.losses import classification, multilabel, regression, representation, robust
from lossrag.losses._registry import LossFn, LossRegistry, register, registry
from lossrag.losses.module import Loss
from lossrag.losses.spec import FAMILIES, TARGET_OF_KIND, HyperParam, LossSpec

__all__ = [
    "FAMILIES",
    "TARGET_OF_KIND",
    "HyperParam",
    "Loss",
    "LossFn",
    "LossRegistry",
    "LossSpec",
    "classification",
    "multilabel",
    "register",
    "registry",
    "regression",
    "representation",
    "robust",
]
