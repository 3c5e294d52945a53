"""The interface every weighting method implements, and the name registry.

A method is either *loss-based* (:class:`LossMethod`: statistic = the detached task losses, output =
one weight per term; never computes per-task gradients) or *gradient-based* (:class:`GradMethod`:
statistic = the Jacobian of the term losses with respect to the parameters of ``shared``, output =
the update direction for those parameters and, where it exists, one weight per term).

Methods carry state (log-variances, logits, loss histories, solver warm starts); they declare it
through ``state_dict``/``load_state_dict`` so that a run resumes bit-for-bit. The composer owns the
method and steps it: the user's optimizer never sees a method's parameters.
"""

from __future__ import annotations

import importlib
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torch import Tensor, nn

if TYPE_CHECKING:
    from lossrag.meta.online import MetaContext

from lossrag._util import unknown_name_error

__all__ = [
    "GradMethod",
    "LossMethod",
    "Method",
    "available",
    "make_method",
    "method_class",
    "register_method",
]


class Method(ABC):
    """Base class of all weighting methods."""

    #: Registry name (``policy=NAME`` in :func:`lossrag.wrap`).
    name: ClassVar[str] = ""
    #: ``"loss"`` or ``"gradient"``.
    kind: ClassVar[Literal["loss", "gradient"]]
    #: True when the method draws random numbers; the composer then runs it on its own RNG stream.
    randomized: ClassVar[bool] = False
    #: True when the method takes one gradient per task (cost grows with the number of tasks).
    per_task_gradients: ClassVar[bool] = False
    #: True when the method takes log L (FAMO, the geometric mean): every loss must exceed its
    #: lower bound, ``min_losses`` when the method has one, else 0.
    positive_losses: ClassVar[bool] = False
    #: True when the weighting divides each loss by its own level (``log L``, ``L / EMA L``: FAMO,
    #: the geometric mean, DB-MTL, STCH's nadir form, the LossRAG policies), so a task's loss
    #: scale does not weigh against the other tasks' (what the raw-target warning says).
    scale_free: ClassVar[bool] = False
    #: True when the method needs the losses of the previous batch re-evaluated after the user's
    #: optimizer step (FAMO); the composer does it with one no-grad forward at the next step.
    needs_rerun: ClassVar[bool] = False
    #: True when the method learns from held-out batches: ``wrap(..., query=...)`` is required.
    needs_query: ClassVar[bool] = False
    #: True for a retrieval policy, which chooses the terms itself and refreshes periodically.
    composes_terms: ClassVar[bool] = False
    #: False when the weights never depend on the losses' values (EW, RLW): the composer then
    #: reads no loss back from the device on the ``Composer.loss`` path.
    reads_losses: ClassVar[bool] = True
    #: True when every weight is 1 at every step (EW): the composer then sums the losses as
    #: they are, with no weighting at all.
    unit_weights: ClassVar[bool] = False
    #: True when ``weigh`` needs the live losses with their graph (GradNorm differentiates them
    #: with respect to the last shared layer); the others get the detached, all-reduced losses.
    live_losses: ClassVar[bool] = False
    #: True when the method counts epochs (``Composer.epoch_end()``) and gets no ``period``
    #: (DWA, STCH's nadir form): the composer warns at ``close()`` if no epoch ever ended.
    needs_epochs: bool = False
    #: The target normalisation the method trains with when ``wrap`` is not told
    #: (``normalize_targets=None``): ``False``, ``True`` or ``"auto"`` (a saved policy's own, the
    #: one it was trained with, on the instance).
    normalize_targets: bool | Literal["auto"] = False

    def setup(self, num_terms: int, last_shared: Sequence[nn.Parameter]) -> None:
        """Prepare state for ``num_terms`` terms. ``last_shared`` are the parameters of the last
        parameterised layer of ``shared`` (GradNorm's W). Called once by the composer."""
        self.num_terms = num_terms

    def observe_rerun(self, losses_after: Tensor) -> None:
        """Receive the previous batch's term losses evaluated after the optimizer step."""

    def epoch_end(self) -> None:
        """Called by ``Composer.epoch_end()`` at the end of each epoch (DWA rolls its history)."""

    def meta_step(self, ctx: MetaContext) -> str | None:
        """A query-learning method (``needs_query``) updates its state from one look-ahead,
        before this step's weights are taken; returns why it skipped, if it did."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: tensors, numbers, strings, lists and dicts only."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class LossMethod(Method):
    """A method that turns the term losses into weights."""

    kind: ClassVar[Literal["loss", "gradient"]] = "loss"

    @abstractmethod
    def weigh(self, losses: Tensor) -> Tensor:
        """Return one weight per term for this step's backward (``Σ w_i L_i``) and update the
        method's own state. ``losses`` is the live ``(K,)`` loss vector (it still has its graph,
        which only GradNorm uses, to take gradients with respect to the last shared layer)."""


class GradMethod(Method):
    """A method that aggregates the per-term gradients on the shared parameters."""

    kind: ClassVar[Literal["loss", "gradient"]] = "gradient"
    per_task_gradients: ClassVar[bool] = True
    #: True when the task heads get ``Σ h_i ∇L_i`` with ``h = method.head_weights()`` instead of
    #: the plain sum (Nash-MTL's authors' code, DB-MTL's log-losses); False: the plain sum.
    heads_weighted: ClassVar[bool] = False

    @abstractmethod
    def aggregate(self, jacobian: Tensor) -> tuple[Tensor, Tensor | None]:
        """Map the ``(K, n)`` Jacobian to the update direction ``(n,)`` and the ``(K,)`` weights
        that produce it, or ``None`` when the direction is not a weighted sum of the rows."""


#: Methods registered so far: the built-ins whose module has been imported, and user classes.
_REGISTRY: dict[str, type[Method]] = {}

#: Every built-in method as ``name -> "module:Class"``. A built-in's module is imported only when
#: the method is asked for (``method_class``/``make_method``), so ``import lossrag`` loads no
#: solver: add a new built-in here as well as decorating it with :func:`register_method`.
_BUILTIN: dict[str, str] = {
    "ew": "lossrag.weighting.ew:EW",
    "uw": "lossrag.weighting.scalarizers:UW",
    "imtll": "lossrag.weighting.scalarizers:IMTLL",
    "rlw": "lossrag.weighting.scalarizers:RLW",
    "geometricmean": "lossrag.weighting.scalarizers:GeometricMean",
    "stch": "lossrag.weighting.scalarizers:STCH",
    "dwa": "lossrag.weighting.scalarizers:DWA",
    "famo": "lossrag.weighting.scalarizers:FAMO",
    "mgda": "lossrag.weighting.aggregators:MGDA",
    "pcgrad": "lossrag.weighting.aggregators:PCGrad",
    "imtlg": "lossrag.weighting.aggregators:IMTLG",
    "upgrad": "lossrag.weighting.aggregators:UPGrad",
    "dualproj": "lossrag.weighting.aggregators:DualProj",
    "alignedmtl": "lossrag.weighting.aggregators:AlignedMTL",
    "graddrop": "lossrag.weighting.aggregators:GradDrop",
    "config": "lossrag.weighting.aggregators:ConFIG",
    "cagrad": "lossrag.weighting.aggregators:CAGrad",
    "nashmtl": "lossrag.weighting.aggregators:NashMTL",
    "fairgrad": "lossrag.weighting.aggregators:FairGrad",
    "gradvac": "lossrag.weighting.aggregators:GradVac",
    "gradnorm": "lossrag.weighting.gradnorm:GradNorm",
    "autolambda": "lossrag.weighting.autolambda:AutoLambda",
    "metaweighting": "lossrag.weighting.metaweighting:MetaWeighting",
    "curriculum": "lossrag.weighting.curriculum:Curriculum",
    "dbmtl": "lossrag.weighting.dbmtl:DBMTL",
    "go4align": "lossrag.weighting.go4align:GO4Align",
    "perf": "lossrag.weighting.perf:PerformanceWeighting",
    "cosmos": "lossrag.weighting.torchjd_extra:COSMOS",
    "crmogm": "lossrag.weighting.torchjd_extra:CRMOGM",
    "excessmtl": "lossrag.weighting.torchjd_extra:ExcessMTL",
    "modo": "lossrag.weighting.torchjd_extra:MoDo",
    "pbi": "lossrag.weighting.torchjd_extra:PBI",
    "sdmgrad": "lossrag.weighting.torchjd_extra:SDMGrad",
    "lossrag": "lossrag.policy.lossrag:LossRAG",
    "lossrag-online": "lossrag.policy.lossrag:LossRAGOnline",
    "lossrag-default": "lossrag.policy.store:DefaultPolicy",
    "lossrag-default-online": "lossrag.policy.store:DefaultPolicyOnline",
}


def _is_builtin(cls: type[Method]) -> bool:
    """True when ``cls`` is the built-in its name is reserved for, registered while its module
    is being imported (classes made by ``type()`` may report ``abc`` as their module)."""
    module, _, qualname = _BUILTIN[cls.name].partition(":")
    return module in sys.modules and cls.__qualname__ == qualname


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``policy=cls.name``.

    Raises:
        ValueError: ``cls.name`` is empty, already registered, or the name of a built-in method.
    """
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"Weighting method name {cls.name!r} is empty or already registered.")
    if cls.name in _BUILTIN and not _is_builtin(cls):
        raise ValueError(
            f"Weighting method name {cls.name!r} is taken by the built-in "
            f"{_BUILTIN[cls.name]}; give {cls.__qualname__} another `name`."
        )
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names of every weighting method: the built-ins (imported or not) and registered ones."""
    return sorted({*_BUILTIN, *_REGISTRY})


def _import_builtin(name: str) -> None:
    """Import the module of the built-in ``name``, which registers it."""
    module, _, qualname = _BUILTIN[name].partition(":")
    cls = getattr(importlib.import_module(module), qualname)
    if _REGISTRY.get(name) is not cls:
        raise RuntimeError(f"Built-in weighting method {name!r}: {module} did not register it.")


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``, importing its module on first use (unknown names:
    ValueError with the closest matches). ``"curriculum+X"``: the curriculum's class, once ``X``
    is known."""
    head, plus, inner = name.partition("+")
    if plus and head == "curriculum":
        method_class(inner)
        return method_class(head)
    if name not in _REGISTRY and name in _BUILTIN:
        _import_builtin(name)
    if name not in _REGISTRY:
        raise unknown_name_error("policy", name, available())
    return _REGISTRY[name]


def make_method(name: str, **options: Any) -> Method:
    """Build the method registered as ``name`` with its published defaults, overridden by
    ``options``. Unknown names raise a ValueError listing the closest matches.
    ``"curriculum+X"`` is loss-based method ``X`` with tasks switched on one after another
    (:func:`lossrag.weighting.curriculum.curriculum_from_name`)."""
    if name.startswith("curriculum+"):
        from lossrag.weighting.curriculum import curriculum_from_name

        return curriculum_from_name(name, **options)
    factory = method_class(name)
    try:
        return factory(**options)
    except TypeError as err:
        raise TypeError(f"Weighting method {name!r}: {err}") from err
