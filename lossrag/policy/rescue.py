"""A regression task left with redescending losses that see a minority of its batch gets its
natural loss back.

A redescending robust loss (Tukey, Welsch, Geman-McClure, Cauchy) behaves like ``u²/2`` near
zero and gives a sample the influence ``ψ(u)``, which falls to 0 beyond its scale; ``ψ(u)/u`` in
``[0, 1]`` is the share of the quadratic's influence the sample keeps. Once only such losses are
on, a jump of the predictions can leave every residual beyond their scale (no gradient again:
Tukey's plateau) or let them settle on a minority's mode, the gross errors'; nothing brought the
natural loss back (a user trial, ``benchmarks/outlier_collapse.py``: 3 of 6 seeds lost the
task). A robust estimate fits the majority of its samples, so at each refresh a task whose
active losses are all redescending and give fewer than :data:`MAJORITY` of its target values at
least :data:`SEEN` of the quadratic's influence switches its natural loss on again
(:meth:`lossrag.policy.LossRAG.refresh`, after its gates): beside the best-scored of them
while they see almost nothing (fewer than :data:`IDLE`: the natural loss brings the residuals
back within their scale; ``max_terms`` kept), in their place while they see a minority (they
hold the predictions at its mode: kept on beside the natural loss, whose multiplier is a
fraction of theirs, they held one seed's task there). The gates of the terms switched start
over (:meth:`lossrag.policy.gates.Gates.force`). A natural loss that is itself redescending
is not brought back.

>>> import torch
>>> from lossrag.losses import registry
>>> tukey = registry.create("tukey", c=0.5)
>>> round(seen_share([tukey], torch.tensor([0.0, 0.1, 2.0, 3.0]), torch.zeros(4)), 2)
0.5
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lossrag.keys import TermKey

if TYPE_CHECKING:
    from lossrag.policy.terms import TermLosses
    from lossrag.tasks import Task

__all__ = ["IDLE", "MAJORITY", "REDESCENDING", "SEEN", "rescue", "seen_share"]

#: Losses whose influence falls to 0 beyond their scale.
REDESCENDING = frozenset({"tukey", "welsch", "geman_mcclure", "cauchy"})
#: A value is seen by a loss that keeps at least this share of the quadratic's influence.
SEEN = 0.1
#: The share of a task's values its losses must see.
MAJORITY = 0.5
#: Below this share its losses are idle rather than misled.
IDLE = 0.05


def seen_share(
    losses: Sequence[Callable[[Tensor, Tensor], Tensor]], output: Tensor, target: Tensor
) -> float:
    """The share of the values of ``output`` (``(B,)`` or ``(B, D)``, in the units the losses
    see) that at least one of ``losses`` (per-sample values, the mean over ``D``, each ``u²/2``
    near zero) gives ``ψ(u)/u ≥`` :data:`SEEN`; a value on its target is seen."""
    z = output.detach().float().requires_grad_(True)
    t = target.detach().float()
    u = (z - t).detach()
    width = u[0].numel() if u.dim() > 1 else 1
    seen = u.abs() < 1e-12
    for loss in losses:
        with torch.enable_grad():
            (psi,) = torch.autograd.grad(loss(z, t).sum(), z)
        seen |= psi * width * u.sign() >= SEEN * u.abs()  # ψ(u)/u ≥ SEEN, u ≠ 0
    return float(seen.float().mean())


def rescue(
    active: dict[str, list[str]],
    natural: Mapping[str, str],
    tasks: Mapping[str, Task],
    library: TermLosses,
    scores: Mapping[TermKey, float],
    max_terms: int,
    outputs: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
) -> dict[TermKey, str]:
    """Apply the rule (the module docstring) to every task on this batch, changing ``active``
    in place; the terms it switched, each with its note (``"on: rescue (...)"`` or
    ``"off: rescue (...)"``). ``scores`` rank a task's robust losses when the best of them
    stay on beside the natural loss."""
    switched: dict[TermKey, str] = {}
    entries = library.entries
    for name, ids in active.items():
        task, own = tasks[name], natural[name]
        # (a natural loss that is itself redescending would bring no pull back)
        if task.kind != "regression" or own in ids or entries[own].name in REDESCENDING:
            continue
        if not {entries[e].name for e in ids} <= REDESCENDING:
            continue
        share = library.seen_share(task, ids, outputs, targets)
        if share >= MAJORITY:
            continue
        saw = f"the task's robust losses saw {share:.0%} of the batch"
        # seeing a minority they hold its mode: the task starts over on its natural loss;
        # seeing almost nothing, the natural loss joins them (room made by their lowest)
        keep = [] if share >= IDLE else _best(name, ids, max_terms - 1, scores)
        switched.update({TermKey(name, e): f"off: rescue ({saw})" for e in ids if e not in keep})
        ids[:] = [*keep, own]
        joins = "it joins them" if keep else "in their place"
        switched[TermKey(name, own)] = f"on: rescue ({saw}; {joins})"
    return switched


def _best(task: str, ids: list[str], n: int, scores: Mapping[TermKey, float]) -> list[str]:
    """The ``n`` best-scored of a task's entries ``ids``, in their order."""
    ranked = sorted(ids, key=lambda e: scores.get(TermKey(task, e), 0.0), reverse=True)
    return [e for e in ids if e in ranked[: max(n, 0)]]
