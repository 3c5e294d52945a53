"""Retrieval: a task's candidate losses from the index, measured on the user's model.

Per task, the query is the mean embedding of its active losses, or, where a task shows corrupted
targets (gross errors, flipped labels), the entry they mislead least (:func:`least_misled`); the
index returns the ``k`` nearest losses of the task's kind (skipping near-copies of those already
chosen), to which the active terms and ``explore`` random entries are added. Each candidate is
then measured on the model at this batch (probe statistics against the probe loss,
:meth:`lossrag.embed.Embedder.on_model`), and by the share of its gradient that the task's
corrupted samples draw (:mod:`lossrag.policy.evidence`). Candidates that a task's evidence
favoured are kept at its next retrieval (``keep``): evidence accumulates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lossrag.embed import PROBE_STATS, SIGNATURE, Embedder
from lossrag.index import LossIndex
from lossrag.losses.spec import FAMILIES
from lossrag.policy.evidence import gradient_shares
from lossrag.policy.terms import TermLosses
from lossrag.tasks import Task

__all__ = ["Candidate", "Found", "gross_shares", "least_misled", "measure", "search"]

#: Cosine above which two library entries count as the same loss.
_SAME = 0.995
#: Column of the on-model log GSNR in a raw embedding.
_GSNR = len(FAMILIES) + len(SIGNATURE) + PROBE_STATS.index("log_gsnr")

#: ``(entry id, retrieval score, exploration?)`` of a candidate before it is measured.
Found = tuple[str, float, bool]


@dataclass(frozen=True)
class Candidate:
    """A retrieved loss of one task, as measured on the model at the last retrieval.

    Attributes:
        entry: Library entry id.
        retrieval: Its retrieval score (1 for the active terms and the natural loss).
        explore: Whether it was drawn at random rather than retrieved.
        vector: Its normalised embedding on the user's model.
        gsnr: Its on-model log gradient signal-to-noise ratio.
        scale: Its loss at the retrieval batch (its scale until it is tracked).
        gross_grad: The share of its per-sample gradient on the task's corrupted samples (0
            where none were found, or for a loss without per-sample values).
    """

    entry: str
    retrieval: float
    explore: bool
    vector: list[float]
    gsnr: float
    scale: float
    gross_grad: float = 0.0


def search(
    index: LossIndex,
    task: Task,
    active: list[str],
    natural: str,
    terms: TermLosses,
    k: int,
    explore: int,
    keep: list[str] | None = None,
    toward: str | None = None,
) -> list[Found]:
    """The natural loss, the ``active`` terms and the candidates to ``keep``, the ``k``
    nearest entries to the query and ``explore`` random ones (the entries met are added to
    ``terms.entries``). The query is the active terms' mean embedding, or the embedding of the
    entry ``toward`` (where the task's evidence points, :func:`least_misled`)."""
    kept = [index.vector(terms.entries[e]) for e in active]
    query = np.mean(kept, axis=0) if toward is None else index.vector(terms.entries[toward])

    def aligned(entry_id: str) -> bool:
        return terms.aligned(task.kind, entry_id)

    found: dict[str, tuple[float, bool]] = {e: (1.0, False) for e in [natural, *active]}
    for e in keep or []:
        if not aligned(e):
            continue
        found.setdefault(e, (float(index.vector(terms.entries[e]) @ query), False))
        kept.append(index.vector(terms.entries[e]))
    limit = len(found) + k
    # an entry whose embedding matches one already chosen (CE and label smoothing at 0, L2
    # and a fixed-σ Gaussian NLL) has the same gradients: skip it, as AutoLoss-Zero's
    # gradient-equivalence check does
    for hit in index.search(query, task.kind, 4 * limit)[0]:
        if len(found) >= limit:
            break
        vector = index.vectors[hit.row]
        if hit.entry.id in found or max(float(v @ vector) for v in kept) > _SAME:
            continue
        terms.entries.setdefault(hit.entry.id, hit.entry)
        if not aligned(hit.entry.id):
            continue
        kept.append(vector)
        found[hit.entry.id] = (hit.score, False)
    pool = index.rows_of(task.kind)
    for row in torch.randint(0, len(pool), (explore,)).tolist():
        entry = index.entries[int(pool[row])]
        terms.entries.setdefault(entry.id, entry)
        if not aligned(entry.id):
            continue
        found.setdefault(entry.id, (float(index.vectors[pool[row]] @ query), True))
    return [(e, s, x) for e, (s, x) in found.items()]


def gross_shares(
    task: Task, entries: list[str], terms: TermLosses, output: Tensor, target: Tensor, mask: Tensor
) -> list[float | None]:
    """Per known entry, the share of its per-sample gradient that the samples of ``mask`` (the
    task's corrupted samples) draw, on this batch's outputs (a regression's in its target's
    standard units; no model backward); ``None`` for a loss without per-sample values."""
    s = terms.scale(task, target) if task.kind == "regression" else 1.0
    y = output.detach() / s
    t = target / s if task.kind == "regression" else target
    return gradient_shares([terms.module(e) for e in entries], y, t, mask)


def least_misled(
    index: LossIndex,
    task: Task,
    terms: TermLosses,
    output: Tensor,
    target: Tensor,
    mask: Tensor,
) -> str | None:
    """The metric-aligned library entry of the task's kind whose per-sample gradient the task's
    corrupted samples (``mask``) draw least (:func:`gross_shares`); ``None`` when none is
    masked."""
    if not bool(mask.any()):
        return None
    pool = [index.entries[row] for row in index.rows_of(task.kind).tolist()]
    for entry in pool:
        terms.entries.setdefault(entry.id, entry)
    ids = [e.id for e in pool if terms.aligned(task.kind, e.id)]
    shares = gross_shares(task, ids, terms, output, target, mask)
    measured = [(share, e) for e, share in zip(ids, shares, strict=True) if share is not None]
    return min(measured, key=lambda pair: pair[0])[1] if measured else None


def measure(
    task: Task,
    found: list[Found],
    index: LossIndex,
    terms: TermLosses,
    embedder: Embedder,
    batch: tuple[Mapping[str, Tensor], Mapping[str, Tensor], Tensor],
    gross: Tensor | None = None,
) -> list[Candidate]:
    """Measure each found entry on the model at ``batch`` (outputs, targets, features), in
    the target's standard units for regression (the probe loss is not homogeneous), with the
    share of its gradient on the samples of ``gross`` (the task's corrupted samples).
    Raises ``FloatingPointError`` on a non-finite statistic."""
    outputs, targets, features = batch
    with torch.enable_grad():
        if task.kind == "representation":
            out = features.flatten(1)
            tgt = targets[task.positives or ""]
            head_in = out
        else:
            out, tgt, head_in = outputs[task.name], targets[task.name], features
            if task.kind == "regression":
                s = terms.scale(task, tgt)
                out, tgt = out / s, tgt / s
        raws = embedder.on_model(
            task.kind,
            [
                (terms.entries[e].name, terms.entries[e].params, terms.module(e).forward)
                for e, _, _ in found
            ],
            out,
            tgt,
            head_in,
        )
    with torch.no_grad():  # each term's loss at this batch: its scale until it is tracked
        scales = [abs(float(terms.loss(task, e, outputs, targets, features))) for e, _, _ in found]
    shares = [0.0] * len(found)
    if gross is not None and bool(gross.any()):
        measured = gross_shares(
            task, [e for e, _, _ in found], terms, outputs[task.name], targets[task.name], gross
        )
        shares = [0.0 if share is None else share for share in measured]
    if not all(np.isfinite(r).all() for r in raws) or not np.isfinite(scales).all():
        raise FloatingPointError(f"non-finite candidate statistics for task {task.name!r}")
    return [
        Candidate(
            e, score, explore, index.normaliser(raw).tolist(), float(raw[_GSNR]), scale, share
        )
        for (e, score, explore), raw, scale, share in zip(found, raws, scales, shares, strict=True)
    ]
