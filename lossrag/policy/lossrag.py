"""``policy="lossrag"``: retrieve candidate losses per task, score them, weight and gate them.

At a refresh (every ``refresh_every`` steps, weights held in between):

1. context per active term (:mod:`lossrag.context`): loss trend, gradient signal-to-noise, norm
   ratio and alignment at the output of ``shared``;
2. per task, the query is the mean embedding of its active losses; the index returns the ``k``
   nearest losses of the task's kind, to which the active terms and ``explore`` random entries are
   added;
3. each candidate is measured on the user's model at this batch (probe statistics against the
   probe loss, :meth:`lossrag.embed.Embedder.on_model`);
4. scores ``a = prior + Δφ`` (:class:`~lossrag.policy.prior.Prior`,
   :class:`~lossrag.policy.net.Correction`, zero until trained); gates with hysteresis on the
   utility (here the score relative to the task's natural loss); weights
   ``K·((1 − floor)·softmax(a/τ) + floor/n)`` over the active terms.

Every step the training loss is ``Σ w_i · L_i / scale_i``, ``scale_i`` the term's *bounded*
loss scale (:meth:`lossrag.context.LossTracker.scales`): its EMA ``L_i``, but never so small,
relative to its first loss, that the term gets more than ``max_ratio`` times the (relative)
multiplier of another term, nor more than ``1 / scale_floor``. The plain ``1 / sg(EMA L_i)``
starves a task whose loss plateaus beside tasks whose loss approaches 0 (issue 12,
``benchmarks/user_trial.py``); the effective multipliers ``w_i / scale_i`` of the last step are
:attr:`LossRAG.multipliers`. The context features still normalise by ``EMA L_i`` (what the
prior and the shipped correction were trained on). Regression candidates that are not homogeneous
in the residual (Huber, Cauchy, ...) see outputs and targets divided by the target's standard
deviation (from the first batch), so their hyper-parameters mean the same on every problem.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from lossrag.context import (
    GLOBAL_FEATURES,
    TERM_FEATURES,
    LossTracker,
    effective_rank,
    global_features,
    gradient_features,
)
from lossrag.embed import PROBE_STATS, RAW_DIM, SIGNATURE, Embedder
from lossrag.index import Entry, LossIndex, default_index
from lossrag.losses import Loss, registry
from lossrag.losses.spec import FAMILIES
from lossrag.policy.gates import Gates
from lossrag.policy.net import Correction
from lossrag.policy.prior import Prior
from lossrag.record import Term
from lossrag.tasks import NATURAL_LOSS, Task
from lossrag.weighting.base import Method, register_method
from lossrag.weighting.metaweighting import common_direction

__all__ = ["FEATURES", "MAX_RATIO", "SCALE_FLOOR", "LossRAG", "LossRAGOnline"]

#: Default largest ratio between two terms' relative loss multipliers (measured in
#: ``benchmarks/user_trial.py``, see :class:`LossRAG`).
MAX_RATIO = 3.0
#: Default smallest relative loss level a term is divided by.
SCALE_FLOOR = 0.0

_EXTRA = ("retrieval_score", "active", "natural", "explore")
#: Length of a candidate's feature vector: the task's context, the candidate's embedding on the
#: user's model, retrieval flags, global context.
FEATURES = len(TERM_FEATURES) + RAW_DIM + len(_EXTRA) + len(GLOBAL_FEATURES)
#: Column of the on-model log GSNR in a raw embedding.
_GSNR = len(FAMILIES) + len(SIGNATURE) + PROBE_STATS.index("log_gsnr")
_HOMOGENEOUS = ("squared", "absolute")
_COL = {name: i for i, name in enumerate(TERM_FEATURES)}
#: Cosine above which two library entries count as the same loss.
_SAME = 0.995


@dataclass(frozen=True)
class _Candidate:
    """A retrieved loss of one task, as measured on the model at the last retrieval."""

    entry: str
    retrieval: float
    explore: bool
    vector: list[float]
    gsnr: float
    scale: float


@register_method
class LossRAG(Method):
    """The retrieval policy: an untrained prior plus a zero-initialised correction by default.

    Args:
        k: Nearest library entries retrieved per task at a refresh.
        explore: Random entries of the task's kind added to the candidates at a refresh.
        retrieve_every: Refreshes between retrievals (candidates measured on the model, gates
            updated); the refreshes in between re-score the held candidates with new context.
        retrieve_backoff: While retrievals are quiet (no gate moved: no term switched, no
            counter towards a switch advanced), the interval between them doubles, up to
            ``retrieve_every · retrieve_backoff`` refreshes; a gate that moves resets it. 1 keeps
            the interval fixed.
        refresh_every: Steps between refreshes (context, scores, weights); weights are held
            in between.
        patience: Retrievals a term's utility must stay negative before it goes off (and stay
            positive before an inactive candidate comes on).
        floor: Share of the total weight spread evenly over the active terms.
        temperature: Softmax temperature of the weights.
        max_terms: Most active terms per task.
        smoothing: EMA factor, across refreshes, of the context features the prior reads.
        meta_lr: Adam learning rate of the correction's online meta-updates (with ``query=``).
        rank_weight: Weight of the listwise ranking loss (candidates ranked by utility) in a
            meta-update, beside the effect of the weights on the query loss.
        prior: The prior's coefficients.
        total_steps: Length of the run, for the progress feature (0 when unknown).
        index: The loss index; the shipped library's by default.
        correction: A trained Δφ; a zero-initialised one by default.
        max_ratio: Largest ratio between two terms' loss multipliers, each relative to the
            term's first loss (:class:`~lossrag.context.LossTracker`); ``inf`` for the plain
            ``1 / EMA L``.
        scale_floor: Smallest relative loss level a term is divided by (its multiplier, relative
            to its first loss, is at most ``1 / scale_floor``); 0 for none.

    Attributes:
        multipliers: ``{term: w / scale}`` of the last step whose coefficients were computed:
            the effective multiplier of each trained term's raw loss, for records
            (``Term.multiplier``). Its keys are the terms trained at that step, i.e. the keys of
            :attr:`weights`, except at a step whose refresh switched a term on (not trained yet,
            absent) or off (trained with weight 0).
    """

    name = "lossrag"
    kind: ClassVar[Literal["loss", "gradient"]] = "loss"
    randomized = True
    composes_terms = True

    def __init__(
        self,
        *,
        k: int = 4,
        explore: int = 1,
        refresh_every: int = 50,
        retrieve_every: int = 4,
        retrieve_backoff: int = 8,
        patience: int = 3,
        floor: float = 0.05,
        temperature: float = 1.0,
        max_terms: int = 2,
        smoothing: float = 0.7,
        meta_lr: float = 3e-4,
        rank_weight: float = 0.5,
        prior: Prior | None = None,
        total_steps: int | None = None,
        index: LossIndex | None = None,
        correction: Correction | None = None,
        max_ratio: float = MAX_RATIO,
        scale_floor: float = SCALE_FLOOR,
    ) -> None:
        for name, value, low in (
            ("k", k, 1),
            ("explore", explore, 0),
            ("refresh_every", refresh_every, 1),
            ("retrieve_every", retrieve_every, 1),
            ("retrieve_backoff", retrieve_backoff, 1),
        ):
            if value < low:
                raise ValueError(f"LossRAG: {name} must be >= {low}, got {value}.")
        if not 0 <= floor < 1 or temperature <= 0 or max_terms < 1:
            raise ValueError(
                "LossRAG: need 0 <= floor < 1, temperature > 0 and max_terms >= 1; got "
                f"floor={floor}, temperature={temperature}, max_terms={max_terms}."
            )
        if not max_ratio >= 1 or not 0 <= scale_floor <= 1:
            raise ValueError(
                "LossRAG: need max_ratio >= 1 and 0 <= scale_floor <= 1; got "
                f"max_ratio={max_ratio}, scale_floor={scale_floor}."
            )
        self.max_ratio, self.scale_floor = max_ratio, scale_floor
        self.k, self.explore, self.refresh_every = k, explore, refresh_every
        self.retrieve_every, self.retrieve_backoff = retrieve_every, retrieve_backoff
        self.floor, self.temperature, self.max_terms = floor, temperature, max_terms
        self.prior = prior or Prior()
        self.smoothing = smoothing
        self.total_steps = total_steps
        self.index = index
        self.correction = correction or Correction(FEATURES)
        self.gates = Gates(patience, patience_on=patience)
        self.meta_lr, self.rank_weight = meta_lr, rank_weight
        self.meta_optimizer = torch.optim.Adam(self.correction.parameters(), lr=meta_lr)

    # ------------------------------------------------------------------ set-up
    def bind(self, tasks: list[Task]) -> None:
        """Prepare for ``tasks``: each starts with its natural loss as its only active term."""
        self.index = self.index if self.index is not None else default_index()
        self.tasks = {t.name: t for t in tasks}
        self.natural: dict[str, str] = {}
        self.entries: dict[str, Entry] = {}
        for t in tasks:
            if t.kind not in self.index.kinds():
                raise ValueError(
                    f"Task {t.name!r}: the loss library has no loss for {t.kind!r} tasks."
                )
            spec = registry.spec(t.loss or NATURAL_LOSS[t.kind])
            entry = Entry(spec.name, spec.check_params(t.loss_params), t.kind)
            self.entries[entry.id] = entry
            self.natural[t.name] = entry.id
        self.active: dict[str, list[str]] = {t.name: [self.natural[t.name]] for t in tasks}
        self._modules: dict[str, Loss] = {}
        self.tracker = LossTracker(floor=self.scale_floor, max_ratio=self.max_ratio)
        self.scores: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.multipliers: dict[str, float] = {}
        self.target_scale: dict[str, float] = {}
        self.last_refresh: int | None = None
        self.smoothed: dict[str, list[float]] = {}
        self.refreshes = 0
        self.next_retrieval, self.retrieve_interval, self.gates_moved = 0, 0, False
        self.rank = 0.0
        self.candidates: dict[str, list[_Candidate]] = {}
        self._scored: tuple[Tensor, Tensor, Tensor] | None = None
        self.meta_on = False
        self.notes: dict[str, str] = {}
        self.utility: dict[str, float] = {}

    def terms(self) -> list[tuple[str, str]]:
        """The active ``(task, entry id)`` pairs, tasks in order."""
        return [(task, e) for task, ids in self.active.items() for e in ids]

    def _module(self, entry_id: str) -> Loss:
        if entry_id not in self._modules:
            entry = self.entries[entry_id]
            self._modules[entry_id] = registry.create(entry.name, **entry.params)
        return self._modules[entry_id]

    # ------------------------------------------------------------------ every step
    def term_losses(
        self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor], features: Tensor | None
    ) -> list[Tensor]:
        """Mean loss of every active term, in :meth:`terms` order, each a scalar with its graph."""
        return [self._term(self.tasks[t], e, outputs, targets, features) for t, e in self.terms()]

    def _term(
        self,
        task: Task,
        entry_id: str,
        outputs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        features: Tensor | None,
    ) -> Tensor:
        """The mean loss of one term (a representation loss on the output of ``shared``; a
        non-homogeneous regression loss in the target's standard units)."""
        if task.kind == "representation":
            if features is None:
                raise ValueError(
                    f"Task {task.name!r} (representation): `shared` produced no output in this "
                    "forward; call model(x) before composer.backward."
                )
            out, tgt = features.flatten(1), targets[task.positives or ""]
        else:
            out, tgt = outputs[task.name], targets[task.name]
            family = registry.spec(self.entries[entry_id].name).family
            if task.kind == "regression" and family not in _HOMOGENEOUS:
                s = self._scale(task, tgt)
                out, tgt = out / s, tgt / s
        value = self._module(entry_id)(out, tgt)
        return value if value.dim() == 0 else value.mean()

    def observe(self, step: int, values: list[float]) -> None:
        """Fold this step's term losses (in :meth:`terms` order) into the trackers."""
        keys = [f"{t}:{e}" for t, e in self.terms()]
        self.tracker.update(step, dict(zip(keys, values, strict=True)))

    def coefficients(self, like: Tensor, terms: list[tuple[str, str]]) -> Tensor:
        """``w_i / scale_i`` for ``terms`` (the active terms when this step's losses were
        taken; one switched off since gets 0), ``scale_i`` the bounded loss scale
        (:meth:`LossTracker.scales`): the gradient weights of this step, also stored in
        :attr:`multipliers`."""
        keys = [f"{t}:{e}" for t, e in terms]
        even = len(self.tasks) / len(keys)
        weights = [self.weights.get(k, 0.0) if self.weights else even for k in keys]
        values = [w / s for w, s in zip(weights, self.tracker.scales(keys), strict=True)]
        self.multipliers = dict(zip(keys, values, strict=True))
        return like.new_tensor(values)

    def due(self, step: int) -> bool:
        """Whether this step refreshes the context, retrieval and scores."""
        return self.last_refresh is None or step - self.last_refresh >= self.refresh_every

    # ------------------------------------------------------------------ refresh
    def refresh(
        self,
        step: int,
        outputs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        features: Tensor,
        losses: list[Tensor],
    ) -> tuple[list[Term], dict[str, dict[str, float]]]:
        """Update the context, score and re-weight; every ``retrieve_every``-th refresh (more
        rarely while the gates are quiet, see ``retrieve_backoff``) also retrieve, measure the
        candidates on the model and update the gates. Returns the
        candidate terms (at a retrieval) and the context, to record. Raises
        ``FloatingPointError`` (the composer keeps the last weights) on a non-finite statistic."""
        index = self.refreshes
        retrieve = index >= self.next_retrieval
        self.last_refresh = step
        self.refreshes += 1
        context = self._context(step, features, losses)
        if retrieve or not self.candidates:
            self.rank = effective_rank(features)  # the correction's global feature
            self.candidates = {
                name: self._measure(self.tasks[name], outputs, targets, features)
                for name in self.tasks
            }
        scores = self._score(step, context, features)
        ctx = {n: dict(zip(TERM_FEATURES, v, strict=True)) for n, v in context.items()}
        if not retrieve:
            keys = [f"{t}:{c.entry}" for t, cands in self.candidates.items() for c in cands]
            self.scores.update(zip(keys, scores, strict=True))
            self._reweigh()
            return [], ctx
        listed = self._update(scores)
        quiet = not self.gates_moved and self.retrieve_interval > 0
        base = self.retrieve_every
        cap = base * self.retrieve_backoff
        self.retrieve_interval = min(2 * self.retrieve_interval, cap) if quiet else base
        self.next_retrieval, self.gates_moved = index + self.retrieve_interval, False
        return listed, ctx

    def _context(self, step: int, features: Tensor, losses: list[Tensor]) -> dict[str, list[float]]:
        """Per task, the context features of its first active term (and their smoothed copy)."""
        terms = self.terms()
        keys = [f"{t}:{e}" for t, e in terms]
        rows = gradient_features(losses, [self.tracker.scale(k) for k in keys], features)
        context: dict[str, list[float]] = {}
        for (name, _), key, row in zip(terms, keys, rows, strict=True):
            if name not in context:
                ratio, slope = self.tracker.trend(step, key)
                context[name] = [ratio, slope, *row, 0.0]
        if not all(np.isfinite(v).all() for v in context.values()):
            raise FloatingPointError("non-finite context")
        for name, now in context.items():  # the prior reads features smoothed over refreshes
            old = self.smoothed.get(name, now)
            b = self.smoothing
            self.smoothed[name] = [b * o + (1 - b) * c for o, c in zip(old, now, strict=True)]
        return context

    def _score(self, step: int, context: dict[str, list[float]], features: Tensor) -> list[float]:
        """Prior plus correction for every candidate, in :attr:`candidates` order."""
        assert self.index is not None
        names = list(self.tasks)
        smooth = self.smoothed
        task_prior = self.prior.task_scores(
            [smooth[n][_COL["log_norm_ratio"]] for n in names],
            [smooth[n][_COL["cos_mean"]] for n in names],
            [smooth[n][_COL["slope"]] for n in names],
            [self.entries[self.active[n][0]].name for n in names],
        )
        glob = global_features(step, self.total_steps, self.rank)
        rows, prior, group = [], [], []
        for gi, name in enumerate(names):
            cands = self.candidates[name]
            natural = next(c for c in cands if c.entry == self.natural[name])
            for c in cands:
                is_natural = c.entry == self.natural[name]
                flags = [c.retrieval, float(c.entry in self.active[name]), float(is_natural)]
                rows.append([*context[name], *c.vector, *flags, float(c.explore), *glob])
                extra = 0.0 if is_natural else self.prior.candidate_score(c.gsnr, natural.gsnr)
                prior.append(task_prior[gi] + extra)
                group.append(gi)
        x = torch.tensor(rows, dtype=torch.float32)
        self._scored = (x, torch.tensor(prior, dtype=torch.float32), torch.tensor(group))
        with torch.no_grad():
            scores = self._scored[1] + self.correction(x, self._scored[2])
        if not bool(torch.isfinite(scores).all()):
            raise FloatingPointError("non-finite scores")
        return [float(v) for v in scores]

    def _measure(
        self,
        task: Task,
        outputs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        features: Tensor,
    ) -> list[_Candidate]:
        """Retrieve the task's candidates and measure each on the model at this batch (in the
        target's standard units for regression: the probe loss is not homogeneous)."""
        assert self.index is not None
        found = self._candidates(task)
        with torch.enable_grad():
            if task.kind == "representation":
                out = features.flatten(1)
                tgt = targets[task.positives or ""]
                head_in = out
            else:
                out, tgt, head_in = outputs[task.name], targets[task.name], features
                if task.kind == "regression":
                    s = self._scale(task, tgt)
                    out, tgt = out / s, tgt / s
            raws = self._embedder.on_model(
                task.kind,
                [
                    (self.entries[e].name, self.entries[e].params, self._module(e).forward)
                    for e, _, _ in found
                ],
                out,
                tgt,
                head_in,
            )
        with torch.no_grad():  # each term's loss at this batch: its scale until it is tracked
            scales = [
                abs(float(self._term(task, e, outputs, targets, features))) for e, _, _ in found
            ]
        if not all(np.isfinite(r).all() for r in raws) or not np.isfinite(scales).all():
            raise FloatingPointError(f"non-finite candidate statistics for task {task.name!r}")
        return [
            _Candidate(
                e, score, explore, self.index.normaliser(raw).tolist(), float(raw[_GSNR]), scale
            )
            for (e, score, explore), raw, scale in zip(found, raws, scales, strict=True)
        ]

    def _scale(self, task: Task, target: Tensor) -> float:
        """The target's standard deviation, from the first batch seen."""
        if task.name not in self.target_scale:
            self.target_scale[task.name] = max(float(target.detach().float().std()), 1e-8)
        return self.target_scale[task.name]

    def _candidates(self, task: Task) -> list[tuple[str, float, bool]]:
        """``(entry id, retrieval score, exploration?)``: the active terms, the ``k`` nearest
        entries to their mean embedding and ``explore`` random ones."""
        assert self.index is not None
        active = self.active[task.name]
        natural = self.natural[task.name]
        kept = [self.index.vector(self.entries[e]) for e in active]
        query = np.mean(kept, axis=0)
        found: dict[str, tuple[float, bool]] = {e: (1.0, False) for e in [natural, *active]}
        limit = len(found) + self.k
        # an entry whose embedding matches one already chosen (CE and label smoothing at 0, L2
        # and a fixed-σ Gaussian NLL) has the same gradients: skip it, as AutoLoss-Zero's
        # gradient-equivalence check does
        for hit in self.index.search(query, task.kind, 4 * limit)[0]:
            if len(found) >= limit:
                break
            vector = self.index.vectors[hit.row]
            if hit.entry.id in found or max(float(v @ vector) for v in kept) > _SAME:
                continue
            kept.append(vector)
            self.entries.setdefault(hit.entry.id, hit.entry)
            found[hit.entry.id] = (hit.score, False)
        pool = self.index.rows_of(task.kind)
        for row in torch.randint(0, len(pool), (self.explore,)).tolist():
            entry = self.index.entries[int(pool[row])]
            self.entries.setdefault(entry.id, entry)
            found.setdefault(entry.id, (float(self.index.vectors[pool[row]] @ query), True))
        return [(e, s, x) for e, (s, x) in found.items()]

    @property
    def _embedder(self) -> Embedder:
        if not hasattr(self, "_embedder_cache"):
            self._embedder_cache = Embedder()
        return self._embedder_cache

    def _update(self, scores: list[float]) -> list[Term]:
        """Store the scores, gate with hysteresis (without a query stream the utility is the
        score relative to the task's natural loss), recompute the weights; the candidate terms
        to record."""
        keys = self.candidate_keys()
        self.scores.update(zip(keys, scores, strict=True))
        self.notes = {}
        if not self.meta_on:  # with a query stream the gates follow meta_update's utilities
            natural = {n: self.scores[f"{n}:{self.natural[n]}"] for n in self.tasks}
            self._gate(
                [
                    (k, 0.0 if k == f"{n}:{self.natural[n]}" else self.scores[k] - natural[n])
                    for k in keys
                    for n in [k.rsplit(":", 1)[0]]
                ]
            )
        self._reweigh()
        return self.candidate_terms()

    def candidate_terms(self, utilities: Mapping[str, float] | None = None) -> list[Term]:
        """Every candidate of the last retrieval as a record term: weight, gate, score, the note
        of its last gate change (or ``retrieved`` / ``explore`` / ``active``) and utility."""
        terms = []
        for name, cands in self.candidates.items():
            for c in cands:
                key = f"{name}:{c.entry}"
                on = c.entry in self.active[name]
                default = "explore" if c.explore else "active" if on else "retrieved"
                terms.append(
                    Term.model_construct(
                        task=name,
                        loss=c.entry,
                        weight=self.weights.get(key, 0.0),
                        active=on,
                        score=self.scores.get(key),
                        note=self.notes.get(key) or default,
                        utility=None if utilities is None else utilities.get(key),
                    )
                )
        return terms

    def _reweigh(self) -> None:
        keys = [f"{t}:{e}" for t, e in self.terms()]
        a = torch.tensor([self.scores.get(k, 0.0) for k in keys], dtype=torch.float64)
        soft = torch.softmax(a / self.temperature, 0)
        w = len(self.tasks) * ((1 - self.floor) * soft + self.floor / len(keys))
        self.weights = dict(zip(keys, w.tolist(), strict=True))

    # ------------------------------------------------------------------ online meta-learning
    def candidate_keys(self) -> list[str]:
        """``task:entry`` of every candidate of the last retrieval, in :attr:`candidates` order."""
        return [f"{t}:{c.entry}" for t, cands in self.candidates.items() for c in cands]

    def candidate_losses(
        self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor], features: Tensor | None
    ) -> Tensor:
        """Every candidate's mean loss divided by its scale (as it would enter the training
        loss), in :meth:`candidate_keys` order."""
        tracked = [k for k in self.candidate_keys() if k in self.tracker.ema]
        active = [f"{t}:{e}" for t, e in self.terms()]
        bounded = dict(zip(tracked, self.tracker.scales(tracked, among=active), strict=True))
        values = []
        for name, cands in self.candidates.items():
            for c in cands:
                scale = bounded.get(f"{name}:{c.entry}", max(c.scale, 1e-8))
                values.append(
                    self._term(self.tasks[name], c.entry, outputs, targets, features) / scale
                )
        return torch.stack(values)

    def query_losses(
        self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor], features: Tensor | None
    ) -> Tensor:
        """Each task's natural loss on a query batch, in task order."""
        return torch.stack(
            [
                self._term(t, self.natural[n], outputs, targets, features)
                for n, t in self.tasks.items()
            ]
        )

    def meta_update(
        self,
        utilities: Mapping[str, float],
        per_task: Tensor | None = None,
        keep: Collection[str] = (),
    ) -> None:
        """One step on the correction Δφ from measured utilities ``u = dL_Q/dw`` per candidate
        (negative: more weight would lower the query loss), then re-gate and re-weigh. Only
        the natural losses of tasks outside ``keep`` (the auxiliary tasks: the query loss does
        not measure them) are gated here, by ``−ū``; the tasks in ``keep`` and the alternative
        losses stay as the refreshes gate them (on ``mnist1d-noisy`` letting the one-step
        utilities gate those too cost 14 points of Δm: they undervalue the slow learners).

        Per-batch utilities are noisy (``research/algorithms.md`` §5), so an EMA of each
        candidate's utility is used, divided by the RMS over the candidates. The meta-loss is
        the first-order change of the query loss through the active terms' weights,
        ``Σ ū_i w_i(a)``, plus ``rank_weight`` times a listwise loss ranking each task's
        candidates by ``−ū``, plus a pull of Δφ towards 0 (the prior); the meta-gradient is
        clipped.
        """
        if self._scored is None:
            return
        x, prior, group = self._scored
        keys = self.candidate_keys()
        if len(keys) != len(x):
            return
        for k in keys:
            if k in utilities:
                old = self.utility.get(k, utilities[k])
                self.utility[k] = 0.8 * old + 0.2 * utilities[k]
        u = torch.tensor([self.utility.get(k, 0.0) for k in keys], dtype=torch.float32)
        u = u / u.pow(2).mean().sqrt().clamp_min(1e-12)
        active = torch.tensor([self._is_active(k) for k in keys])
        with torch.enable_grad():
            delta = self.correction(x, group)
            a = prior + delta
            soft = torch.softmax(a[active] / self.temperature, 0)
            w = len(self.tasks) * ((1 - self.floor) * soft + self.floor / int(active.sum()))
            if per_task is None:
                loss = (u[active] * w).sum() + 0.1 * delta.pow(2).mean()
            else:  # one objective per task: move the scores along their common descent direction
                rows = per_task / per_task.pow(2).mean().sqrt().clamp_min(1e-12)
                grads = torch.stack(
                    [
                        torch.autograd.grad((r[active] * w).sum(), a, retain_graph=True)[0]
                        for r in rows
                    ]
                )
                loss = (a * common_direction(grads).to(a).detach()).sum()
                loss = loss + 0.1 * delta.pow(2).mean()
            for g in group.unique():
                rows = group == g
                target = torch.softmax(-u[rows], 0)
                loss = loss - self.rank_weight * (target * torch.log_softmax(a[rows], 0)).sum()
            self.meta_optimizer.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.correction.parameters(), 1.0)
        self.meta_optimizer.step()
        with torch.no_grad():
            scores = (prior + self.correction(x, group)).tolist()
        self.scores.update(zip(keys, scores, strict=True))
        auxiliary = {f"{n}:{e}" for n, e in self.natural.items() if n not in keep}
        self._gate([(k, -v) for k, v in zip(keys, u.tolist(), strict=True) if k in auxiliary])
        self._reweigh()

    def _is_active(self, key: str) -> bool:
        name, entry = key.rsplit(":", 1)
        return entry in self.active[name]

    def _gate(self, utilities: list[tuple[str, float]]) -> None:
        """Update the gates from ``(term key, utility)``; keep each task's floor and cap."""
        self.notes = {}
        for key, utility in utilities:
            name, entry_id = key.rsplit(":", 1)
            active = self.active[name]
            is_on = entry_id in active
            if not is_on and len(active) >= self.max_terms:
                continue  # no room: the candidate is not counted towards switching on
            now_on, why = self.gates.update(key, utility, is_on)
            self.gates_moved |= now_on != is_on or self.gates.count.get(key, 0) > 0
            if now_on and not is_on:
                active.append(entry_id)
            elif not now_on and is_on:
                active.remove(entry_id)
            if why:
                self.notes[key] = why
        for name, active in self.active.items():
            if not active:
                active.append(self.natural[name])
                self.notes[f"{name}:{self.natural[name]}"] = (
                    "on: floor (every other term of the task is off)"
                )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Active sets, scores, weights, trackers, gates and Δφ (plain containers, tensors)."""
        return {
            "active": {k: list(v) for k, v in self.active.items()},
            "entries": {k: [e.name, dict(e.params), e.kind] for k, e in self.entries.items()},
            "scores": dict(self.scores),
            "weights": dict(self.weights),
            "target_scale": dict(self.target_scale),
            "last_refresh": self.last_refresh,
            "smoothed": {k: list(v) for k, v in self.smoothed.items()},
            "refreshes": self.refreshes,
            "retrieval": [self.next_retrieval, self.retrieve_interval, self.gates_moved, self.rank],
            "candidates": {
                k: [[c.entry, c.retrieval, c.explore, list(c.vector), c.gsnr, c.scale] for c in v]
                for k, v in self.candidates.items()
            },
            "tracker": self.tracker.state_dict(),
            "gates": self.gates.state_dict(),
            "correction": self.correction.state_dict(),
            "meta_optimizer": self.meta_optimizer.state_dict(),
            "utility": dict(self.utility),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.entries = {k: Entry(n, dict(p), kind) for k, (n, p, kind) in state["entries"].items()}
        self.active = {k: list(v) for k, v in state["active"].items()}
        self.scores = dict(state["scores"])
        self.weights = dict(state["weights"])
        self.target_scale = dict(state["target_scale"])
        self.last_refresh = state["last_refresh"]
        self.smoothed = {k: list(v) for k, v in state["smoothed"].items()}
        self.refreshes = int(state["refreshes"])
        # a state from before the back-off: the fixed schedule's next retrieval
        due = -(-self.refreshes // self.retrieve_every) * self.retrieve_every
        retrieval = state.get("retrieval", [due, self.retrieve_every, True, 0.0])
        self.next_retrieval, self.retrieve_interval = int(retrieval[0]), int(retrieval[1])
        self.gates_moved, self.rank = bool(retrieval[2]), float(retrieval[3])
        self.candidates = {
            k: [
                _Candidate(e, float(r), bool(x), list(v), float(g), float(c))
                for e, r, x, v, g, c in cands
            ]
            for k, cands in state["candidates"].items()
        }
        self.tracker.load_state_dict(state["tracker"])
        self.gates.load_state_dict(state["gates"])
        self.correction.load_state_dict(state["correction"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.utility = dict(state["utility"])


@register_method
class LossRAGOnline(LossRAG):
    """:class:`LossRAG` that must be given a query stream (``wrap(..., query=...)``) and adapts
    its correction online from it; the name the benchmark runs online adaptation under."""

    name = "lossrag-online"
    needs_query = True
