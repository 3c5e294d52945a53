"""Context: detached, scale-free features of the training state, for the retrieval policy.

Per term, cheaply every step (Python floats): the first loss ``L0``, an EMA of the loss (the
scale each term is divided by) and an EMA of ``log L``. At a refresh (every few steps), per term,
from one head-only backward to the output of ``shared``: the log gradient signal-to-noise over
samples, the log norm ratio and the cosine of the term's scale-normalised gradient with the
mean, plus ``log(L/L0)`` and the slope of ``log L``. Globally: progress ``t/T`` and the effective
rank of the shared features.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

import torch
from torch import Tensor

from lossrag.embed.stats import log_gsnr
from lossrag.keys import TermKey, nest, unnest

__all__ = [
    "GLOBAL_FEATURES",
    "TERM_FEATURES",
    "LossTracker",
    "effective_rank",
    "global_features",
    "gradient_features",
]

#: Per-term context features, in order.
TERM_FEATURES: tuple[str, ...] = (
    "log_loss_ratio",  # log(L / L0)
    "slope",  # change of the EMA of log L per 100 steps since the last refresh
    "log_gsnr",  # gradient signal-to-noise over the samples at the output of `shared`
    "log_norm_ratio",  # ‖∇L/EMA(L)‖ over the mean of the terms
    "cos_mean",  # cosine of ∇L/EMA(L) with the mean of the terms'
    "cos_query",  # reserved for a cosine with a query gradient: 0 (none is fed), not recorded
)
#: Global context features, in order.
GLOBAL_FEATURES: tuple[str, ...] = ("progress", "effective_rank")

_TINY = 1e-12


class LossTracker:
    """Running statistics of each term's loss, updated every step from Python floats.

    Two scales per term:

    - :meth:`scale`, ``|EMA L|``: the loss level the context features are normalised by (what
      the prior and the correction were trained on);
    - :meth:`scales`, the *bounded* scale each term's loss is divided by in the training loss.
      ``1 / EMA L`` alone hands unbounded multipliers to a term whose loss approaches 0 and
      starves a term whose loss plateaus (issue 12: a 10-class task fell from 0.96 to 0.80
      accuracy beside two standardised regressions). The bounded scale works on each term's
      *relative level* ``r = EMA L / L0`` (``L0`` the term's first finite, non-zero loss):
      ``scale = L0 · max(r, floor, max_r / max_ratio)`` where ``max_r`` is the largest relative
      level among the terms trained together. So between any two terms
      ``(L0_i / scale_i) / (L0_j / scale_j) <= max_ratio`` (a term is never more than
      ``max_ratio`` times as favoured, relative to its initial loss, as another), and no term's
      ``L0 / scale`` exceeds ``1 / floor``. With ``max_ratio = inf`` and ``floor = 0`` this is
      the plain ``|EMA L|``. ``L0`` must mean something: a regression whose first loss is
      dominated by a target offset (raw units) looks "done" once the offset is fitted and is
      then held back by the bound (``qm9-raw``: Δm 23 -> 44); normalise such targets
      (:mod:`lossrag.targets`).

    Args:
        beta: EMA factor of the loss level and of ``log L``.
        floor: Smallest relative level ``r`` a term is divided by (0: none).
        max_ratio: Largest ratio between two terms' ``L0 / scale`` (``inf``: none).
    """

    def __init__(self, beta: float = 0.9, floor: float = 0.0, max_ratio: float = math.inf) -> None:
        if not 0 <= floor <= 1 or not max_ratio >= 1:
            raise ValueError(
                f"LossTracker: need 0 <= floor <= 1 and max_ratio >= 1; got floor={floor}, "
                f"max_ratio={max_ratio}."
            )
        self.beta, self.floor, self.max_ratio = beta, floor, max_ratio
        self.first: dict[TermKey, float] = {}
        self.ema: dict[TermKey, float] = {}
        self.log_ema: dict[TermKey, float] = {}
        self.log_mark: dict[TermKey, tuple[int, float]] = {}
        self.reference: dict[TermKey, float] = {}
        self.joining: dict[TermKey, float] = {}

    def join(self, key: TermKey, like: TermKey) -> None:
        """Let a term that comes on mid-run (a loss switched on for a task) start at the
        relative level of ``like`` (its task's natural loss): its reference becomes its first
        loss over that level. A fresh reference (``r = 1``) would make it the least advanced
        term and, through the bound, cut every other term's multiplier (a class task lost 5–10 %
        of accuracy beside two switched regressions on ``mnist1d-outliers``)."""
        if key not in self.reference:
            self.joining[key] = self.relative(like)

    def update(self, step: int, values: dict[TermKey, float]) -> None:
        """Fold this step's finite term losses in."""
        b = self.beta
        for key, v in values.items():
            log_v = math.log(abs(v) + _TINY)
            if key not in self.ema:
                self.first[key], self.ema[key], self.log_ema[key] = v, v, log_v
                self.log_mark[key] = (step, log_v)
            else:
                self.ema[key] = b * self.ema[key] + (1 - b) * v
                self.log_ema[key] = b * self.log_ema[key] + (1 - b) * log_v
            if key not in self.reference and abs(v) > _TINY:
                self.reference[key] = abs(v) / max(self.joining.pop(key, 1.0), _TINY)

    def amend(
        self,
        step: int,
        taken: dict[TermKey, float],
        mean: dict[TermKey, float],
        before: tuple[set[TermKey], set[TermKey]],
    ) -> None:
        """Turn this step's :meth:`update` with ``taken`` (an accumulation window's first
        micro-batch) into one with ``mean`` (the window's mean losses), leaving what happened
        in between (a trend mark, a join) in place. ``before``: :meth:`untracked` just before
        that update."""
        fresh, unreferenced = before
        b = self.beta
        for key, v in taken.items():
            m = mean[key]
            if key not in self.ema or not math.isfinite(m):
                continue
            log_m = math.log(abs(m) + _TINY)
            if key in fresh:
                self.first[key], self.ema[key], self.log_ema[key] = m, m, log_m
            else:
                self.ema[key] += (1 - b) * (m - v)
                self.log_ema[key] += (1 - b) * (log_m - math.log(abs(v) + _TINY))
            if self.log_mark[key][0] == step:
                self.log_mark[key] = (step, self.log_ema[key])
            if key in unreferenced:  # its reference was (to be) taken here
                joined = abs(v) / self.reference[key] if key in self.reference else None
                self.reference.pop(key, None)
                factor = self.joining.pop(key, joined)
                if abs(m) > _TINY:
                    self.reference[key] = abs(m) / max(1.0 if factor is None else factor, _TINY)
                elif factor is not None:  # no reference yet: it still joins at that level
                    self.joining[key] = factor

    def untracked(self, keys: Collection[TermKey]) -> tuple[set[TermKey], set[TermKey]]:
        """Of ``keys``: those not tracked yet, and those without a reference yet."""
        return {k for k in keys if k not in self.ema}, {k for k in keys if k not in self.reference}

    def scale(self, key: TermKey) -> float:
        """The term's loss level ``|EMA L|`` (at least 1e-8; 1 before it is tracked): what the
        context features are normalised by."""
        return max(abs(self.ema.get(key, 1.0)), 1e-8)

    def relative(self, key: TermKey) -> float:
        """``r = |EMA L| / L0``, the term's loss level relative to its first non-zero loss (1
        until it has one)."""
        ref = self.reference.get(key)
        return 1.0 if ref is None else self.scale(key) / ref

    def scales(
        self, keys: Sequence[TermKey], among: Sequence[TermKey] | None = None
    ) -> list[float]:
        """The bounded scales ``keys`` are divided by in the training loss:
        ``L0 · max(r, floor, max_r / max_ratio)`` (see the class docstring), ``max_r`` over
        ``among`` (the terms trained together; default ``keys``); a term without a reference
        yet gets its loss level."""
        rel = [self.relative(k) for k in (keys if among is None else among) if k in self.reference]
        low = max(self.floor, max(rel, default=1.0) / self.max_ratio)
        return [
            max(self.scale(k), self.reference[k] * low) if k in self.reference else self.scale(k)
            for k in keys
        ]

    def trend(self, step: int, key: TermKey) -> tuple[float, float]:
        """``(log(L/L0), slope of log L per 100 steps)`` since the last call for ``key``."""
        if key not in self.ema:
            return 0.0, 0.0
        ratio = math.log((abs(self.ema[key]) + _TINY) / (abs(self.first[key]) + _TINY))
        then, log_then = self.log_mark[key]
        slope = 100 * (self.log_ema[key] - log_then) / max(step - then, 1)
        self.log_mark[key] = (step, self.log_ema[key])
        return ratio, slope

    def state_dict(self) -> dict[str, Any]:
        """Plain containers: per statistic, ``{task: {loss: value}}``."""
        return {
            "first": nest(self.first),
            "ema": nest(self.ema),
            "log_ema": nest(self.log_ema),
            "log_mark": nest({k: list(v) for k, v in self.log_mark.items()}),
            "reference": nest(self.reference),
            "joining": nest(self.joining),
        }

    def load_state_dict(self, state: dict[str, Any], tasks: Collection[str] = ()) -> None:
        """Restore :meth:`state_dict`, or an old one keyed by ``"task:loss"`` strings (split by
        :func:`lossrag.keys.parse_key` with the task names ``tasks``); a state from before the
        bounded scales takes each term's first non-zero loss as its reference."""

        def floats(name: str) -> dict[TermKey, float]:
            return {k: float(v) for k, v in unnest(state[name], tasks).items()}

        self.first, self.ema, self.log_ema = floats("first"), floats("ema"), floats("log_ema")
        marks = unnest(state["log_mark"], tasks)
        self.log_mark = {k: (int(v[0]), float(v[1])) for k, v in marks.items()}
        self.reference = (
            floats("reference")
            if "reference" in state
            else {k: abs(v) for k, v in self.first.items() if abs(v) > _TINY}
        )
        self.joining = floats("joining") if "joining" in state else {}


def gradient_features(
    losses: Sequence[Tensor], scales: Sequence[float], features: Tensor
) -> list[list[float]]:
    """``[log_gsnr, log_norm_ratio, cos_mean]`` per term, from gradients at ``features``.

    Each term costs one backward through its head only (the graph is kept for the step's own
    backward), provided ``losses`` are the terms' own scalars: an element of a stacked tensor
    would send (zero) gradients back through every head. A term that does not reach
    ``features`` gets zeros.
    """
    per_sample = []
    for loss in losses:
        (rows,) = torch.autograd.grad(loss, features, retain_graph=True, allow_unused=True)
        per_sample.append(torch.zeros_like(features) if rows is None else rows.detach())
    gsnr = [log_gsnr(rows) for rows in per_sample]
    g = torch.stack(
        [rows.flatten(1).float().sum(0) / s for rows, s in zip(per_sample, scales, strict=True)]
    )
    norms = g.norm(dim=1)
    mean = g.mean(0)
    cos = (g @ mean) / (norms * mean.norm()).clamp_min(_TINY)
    ratio = torch.log((norms + _TINY) / (norms.mean() + _TINY))
    return [[s, float(r), float(c)] for s, r, c in zip(gsnr, ratio, cos, strict=True)]


def effective_rank(features: Tensor) -> float:
    """Effective rank of the shared features (exp of the entropy of the normalised singular
    values) over their width."""
    x = features.detach().flatten(1).float()
    x = x - x.mean(0)
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T  # its eigenvalues are s², cheaper
    s = torch.linalg.eigvalsh(gram.double()).clamp_min(0).sqrt()
    p = s / s.sum().clamp_min(_TINY)
    return float(torch.exp(-(p * torch.log(p.clamp_min(_TINY))).sum())) / max(min(x.shape), 1)


def global_features(step: int, total_steps: int | None, rank: float) -> list[float]:
    """``[progress, effective_rank]``: ``t/T`` (0 when ``T`` is unknown) and ``rank``
    (:func:`effective_rank`)."""
    progress = min(step / total_steps, 1.0) if total_steps else 0.0
    return [progress, rank]
