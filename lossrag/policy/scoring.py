"""Scoring: context features -> one feature vector per candidate -> ``a = prior + Δφ``.

The context of a task is that of its first active term (:mod:`lossrag.context`: loss trend,
gradient signal-to-noise, norm ratio and alignment at the output of ``shared``); the prior reads
it smoothed over refreshes. A candidate's feature vector is its task's context, its embedding on
the user's model, retrieval flags and the global context; the prior
(:class:`~lossrag.policy.prior.Prior`) scores the task and the candidate's GSNR against the
natural loss's, and the correction (:class:`~lossrag.policy.net.Correction`) adds ``Δφ``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from lossrag.context import (
    GLOBAL_FEATURES,
    TERM_FEATURES,
    LossTracker,
    gradient_features,
)
from lossrag.embed import RAW_DIM
from lossrag.keys import TermKey
from lossrag.policy.evidence import relief
from lossrag.policy.net import Correction
from lossrag.policy.prior import Prior
from lossrag.policy.retrieval import Candidate

__all__ = ["FEATURES", "Scored", "candidate_rows", "scores", "smooth", "task_context"]

_EXTRA = ("retrieval_score", "active", "natural", "explore")
#: Length of a candidate's feature vector: the task's context, the candidate's embedding on the
#: user's model, retrieval flags, global context.
FEATURES = len(TERM_FEATURES) + RAW_DIM + len(_EXTRA) + len(GLOBAL_FEATURES)
_COL = {name: i for i, name in enumerate(TERM_FEATURES)}


class Scored(NamedTuple):
    """The candidates of the last scoring, in candidate order.

    Attributes:
        x: Feature vectors ``(N, FEATURES)``.
        prior: Prior scores ``(N,)``.
        group: Index of each candidate's task ``(N,)``.
    """

    x: Tensor
    prior: Tensor
    group: Tensor


def task_context(
    step: int,
    terms: Sequence[TermKey],
    tracker: LossTracker,
    features: Tensor,
    losses: list[Tensor],
) -> dict[str, list[float]]:
    """Per task, the context features of its first active term (``terms`` the active terms,
    ``losses`` their losses); raises ``FloatingPointError`` when one is not finite."""
    rows = gradient_features(losses, [tracker.scale(k) for k in terms], features)
    context: dict[str, list[float]] = {}
    for key, row in zip(terms, rows, strict=True):
        if key.task not in context:
            ratio, slope = tracker.trend(step, key)
            context[key.task] = [ratio, slope, *row, 0.0]
    if not all(np.isfinite(v).all() for v in context.values()):
        raise FloatingPointError("non-finite context")
    return context


def smooth(
    smoothed: dict[str, list[float]], context: dict[str, list[float]], factor: float
) -> None:
    """Fold ``context`` into ``smoothed`` (an EMA with ``factor`` across refreshes)."""
    for name, now in context.items():
        old = smoothed.get(name, now)
        smoothed[name] = [factor * o + (1 - factor) * c for o, c in zip(old, now, strict=True)]


def candidate_rows(
    candidates: dict[str, list[Candidate]],
    context: dict[str, list[float]],
    smoothed: dict[str, list[float]],
    active: dict[str, list[str]],
    natural: dict[str, str],
    prior: Prior,
    active_names: dict[str, str],
    glob: list[float],
    gross: dict[str, float] | None = None,
    kinds: dict[str, str] | None = None,
) -> Scored:
    """Feature vectors and prior scores of every candidate, tasks in ``natural`` order
    (``active_names``: the library name of each task's first active term, ``glob`` the global
    context features, ``gross`` each task's corruption evidence, ``kinds`` each task's kind)."""
    names, gross, kinds = list(natural), gross or {}, kinds or {}
    task_prior = prior.task_scores(
        [smoothed[n][_COL["log_norm_ratio"]] for n in names],
        [smoothed[n][_COL["cos_mean"]] for n in names],
        [smoothed[n][_COL["slope"]] for n in names],
        [active_names[n] for n in names],
    )
    rows, priors, group = [], [], []
    for gi, name in enumerate(names):
        cands = candidates[name]
        nat = next(c for c in cands if c.entry == natural[name])
        kind, evidence = kinds.get(name, "regression"), gross.get(name, 0.0)
        for c in cands:
            is_natural = c.entry == natural[name]
            flags = [c.retrieval, float(c.entry in active[name]), float(is_natural)]
            rows.append([*context[name], *c.vector, *flags, float(c.explore), *glob])
            extra = (
                0.0
                if is_natural
                else prior.candidate_score(
                    c.gsnr, nat.gsnr, evidence, relief(kind, nat.gross_grad, c.gross_grad), kind
                )
            )
            priors.append(task_prior[gi] + extra)
            group.append(gi)
    return Scored(
        torch.tensor(rows, dtype=torch.float32),
        torch.tensor(priors, dtype=torch.float32),
        torch.tensor(group),
    )


def scores(scored: Scored, correction: Correction) -> list[float]:
    """``prior + Δφ`` per candidate; raises ``FloatingPointError`` when one is not finite."""
    with torch.no_grad():
        values = scored.prior + correction(scored.x, scored.group)
    if not bool(torch.isfinite(values).all()):
        raise FloatingPointError("non-finite scores")
    return [float(v) for v in values]
