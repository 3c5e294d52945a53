"""The options of :func:`lossrag.wrap`, defined once and validated in one place."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from lossrag._util import unknown_name_error

__all__ = ["Options", "parse_options"]


class Options(BaseModel):
    """Keyword options of :func:`lossrag.wrap` (every one optional).

    Attributes:
        seed: Seed of the composer's own random stream (RLW, PCGrad, GradVac, GradDrop and the
            retrieval policy's exploration draw from it, never from the global one). Defaults
            to ``torch.initial_seed()``.
        max_skips: Consecutive non-finite steps tolerated before ``NonFiniteLossError``
            (counted where the composer reads the losses: every ``backward``, and ``loss`` on
            the CPU or with a method that reads them; EW's and RLW's ``loss`` on an accelerator
            decide on the device and count none).
        query: An iterable (cycled when it runs out) of held-out ``(x, y)`` batches shaped like
            training batches. With a retrieval policy it turns on online meta-adaptation; the
            query-learning baselines (``autolambda``, ``metaweighting``) need it.
        meta_every: Steps between meta-steps.
        meta_objective: ``"sum"`` (one query objective: the tasks' query losses, each divided by
            its running mean, summed), ``"common"`` (one per task, combined by the
            MetaWeighting min-norm common direction) or ``"transfer"`` (per task, as
            ``common``, but a task's candidates are scored only by their effect on the other
            tasks' query losses).
        optimizer: The optimizer that steps the model; an Adam-style one lets the meta-step
            precondition its look-ahead as Adam does.
        query_tasks: Names of the tasks whose query losses the meta-step lowers (Auto-Lambda's
            primary tasks); the others are auxiliary. Default: every task.
        query_objective: A retrieval policy's query loss per task: ``"metric"`` (default), a
            smooth surrogate of the task's metric (:mod:`lossrag.meta.objectives`: L1 for
            ``mae``, ``1 − p_true`` for ``accuracy``, soft-F1 for ``f1``, ...), or
            ``"natural"``, its natural loss.
        scaler: The ``torch.amp.GradScaler`` of an fp16 loop. A step the scaler skips (its
            scale went down) leaves the method's state as it was before that step (the target
            statistics of ``normalize_targets`` keep that batch's targets: they describe the
            data, not a step). Loss-based methods only.
        trace_every: With ``trace=``, records are written in groups of this many steps, so
            that the loss path reads no value from the device at every step.
        trace_append: With ``trace=``, continue the run the file already holds (a run resumed
            from a checkpoint) instead of moving it to ``<name>.1`` and starting a new file
            (:class:`lossrag.TraceWriter`); :meth:`Composer.load_state_dict` drops the records
            the file holds from the checkpoint's step on (written after it, before the stop).
        normalize_targets: PopArt target normalisation of the regression tasks
            (:class:`lossrag.targets.TargetNormalizer`): their losses are taken on targets
            standardised by running statistics, and a head that is a final ``nn.Linear`` is
            re-parametrised so that the model's outputs stay in the user's units (its ``W, b``
            hold the normalised head while wrapped; ``Composer.close()`` folds the statistics
            back in). Records carry the statistics. ``"auto"`` normalises only the targets
            far from standard units at the first batch (:func:`lossrag.targets.far_from_unit`);
            ``None`` (the default) leaves the choice to the method: the shipped policy
            (``policy="default"``) uses ``"auto"``, every other method ``False``.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    seed: int | None = None
    max_skips: int = Field(10, ge=0)
    query: Any = None  # any iterable of (x, y); kept as given (pydantic would consume it)
    meta_every: int = Field(5, ge=1)
    meta_objective: Literal["sum", "common", "transfer"] = "sum"
    optimizer: torch.optim.Optimizer | None = None
    query_tasks: list[str] | None = None
    query_objective: Literal["metric", "natural"] = "metric"
    scaler: torch.amp.GradScaler | None = None
    trace_every: int = Field(32, ge=1)
    trace_append: StrictBool = False
    normalize_targets: bool | Literal["auto"] | None = None


#: The options that only mean something with ``query=``.
_QUERY_OPTIONS = ("meta_every", "meta_objective", "query_tasks", "query_objective")


def parse_options(options: dict[str, Any]) -> Options:
    """Validate ``wrap``'s keyword options; errors name the option and what was expected."""
    known = set(Options.model_fields)
    for key in options:
        if key not in known:
            raise unknown_name_error("wrap option", key, sorted(known))
    mode = options.get("normalize_targets")
    if not (mode is None or isinstance(mode, bool) or (isinstance(mode, str) and mode == "auto")):
        # pydantic's bool would take "yes", 1 or "on" for True
        raise ValueError(
            f"wrap: normalize_targets must be True, False, 'auto' or None, got {mode!r}."
        )
    try:
        parsed = Options(**options)
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][0])
        expected = str(first["msg"]).replace("Input should be", "must be")
        raise ValueError(f"wrap: {name} {expected}, got {options.get(name)!r}.") from None
    if parsed.query is None:  # said, not silently ignored (a user trial's meta_every=5)
        for key in _QUERY_OPTIONS:
            if options.get(key) is not None:
                raise ValueError(
                    f"wrap: {key} belongs to learning from a query set, and no query= was given "
                    "(pass query=<iterable of (x, y) batches>, or leave it out)."
                )
    return parsed
