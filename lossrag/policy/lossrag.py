"""``policy="lossrag"``: retrieve candidate losses per task, score them, weight and gate them.

At a refresh (every ``refresh_every`` steps, weights held in between; :mod:`.schedule`):

1. context per active term, smoothed for the prior (:mod:`.scoring`);
2. at a retrieval, per task, candidates from the index measured on the user's model
   (:mod:`.retrieval`); the share of a task's corrupted samples (a regression's gross errors, a
   classification's contradicted labels; :mod:`.evidence`) is averaged into its evidence, and
   while it is above the prior's floor the query moves to the library entry they mislead least;
3. scores ``a = prior + Δφ`` (:mod:`.scoring`; the prior rewards a candidate that the corrupted
   samples mislead less than the natural loss, in proportion to the evidence); at a retrieval,
   the gates act on each candidate's running utility with a confidence bound (here the score
   relative to the task's natural loss; the natural loss's own is minus the best active
   alternative's; :mod:`.gates`); weights: each task's from its natural loss's score,
   ``K·((1 − floor)·softmax(a/τ) + floor/K)``, split between its active terms by their scores
   (:mod:`.weights`);
4. a regression task left with redescending losses that see a minority of its batch gets its
   natural loss back (:mod:`.rescue`).

Every step the training loss is ``Σ w_i · L_i / scale_i`` (:mod:`.terms` gives each ``L_i``),
``scale_i`` the term's *bounded* loss scale (:meth:`lossrag.context.LossTracker.scales`): its
EMA ``L_i``, but never so small, relative to its first loss, that the term gets more than
``max_ratio`` times the (relative) multiplier of another term, nor more than ``1 / scale_floor``.
The plain ``1 / sg(EMA L_i)`` starves a task whose loss plateaus beside tasks whose loss
approaches 0 (issue 12, ``benchmarks/user_trial.py``); the effective multipliers
``w_i / scale_i`` of the last step are :attr:`LossRAG.multipliers`. The context features still
normalise by ``EMA L_i`` (what the prior and the shipped correction were trained on). With a
query stream, :mod:`lossrag.meta.online` measures the candidates' utilities and
:mod:`lossrag.meta.learner` steps the correction.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from functools import cached_property
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from lossrag.context import TERM_FEATURES, LossTracker, effective_rank, global_features
from lossrag.embed import Embedder
from lossrag.index import Entry, LossIndex, default_index
from lossrag.keys import TermKey
from lossrag.losses import registry
from lossrag.meta.learner import CorrectionLearner
from lossrag.meta.objectives import Objective
from lossrag.policy import weights as weighing
from lossrag.policy.evidence import corruption
from lossrag.policy.gates import Gates
from lossrag.policy.net import Correction
from lossrag.policy.prior import Prior
from lossrag.policy.rescue import rescue
from lossrag.policy.retrieval import Candidate, least_misled, measure, search
from lossrag.policy.schedule import Schedule
from lossrag.policy.scoring import FEATURES, Scored, candidate_rows, scores, smooth, task_context
from lossrag.policy.state import load_state, state_of
from lossrag.policy.terms import TermLosses
from lossrag.record import Term
from lossrag.tasks import NATURAL_LOSS, Task
from lossrag.weighting.base import Method, register_method

__all__ = ["FEATURES", "MAX_RATIO", "SCALE_FLOOR", "LossRAG", "LossRAGOnline"]

#: Default largest ratio between two terms' relative loss multipliers (measured in
#: ``benchmarks/user_trial.py``, see :class:`LossRAG`).
MAX_RATIO = 3.0
#: Default smallest relative loss level a term is divided by.
SCALE_FLOOR = 0.0
#: Default steps between refreshes, and refreshes between retrievals: the second retrieval,
#: where the gates first move, comes at step ``REFRESH_EVERY * RETRIEVE_EVERY``.
REFRESH_EVERY, RETRIEVE_EVERY = 50, 4


def _recorded(features: list[float]) -> dict[str, float]:
    """A task's context features as its record lists them: by name, without ``cos_query``, a
    slot of the trained policies' feature vector that holds 0 (no query gradient is fed)."""
    named = dict(zip(TERM_FEATURES, features, strict=True))
    named.pop("cos_query")
    return named


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
        patience: Consecutive retrievals with a negative utility before an active term goes
            off.
        patience_on: Fewest retrievals of evidence before a term's confidence bound can switch
            it (:class:`~lossrag.policy.gates.Gates`).
        spread: Prior spread of one utility in the gates' confidence bounds: a candidate comes
            on once its mean utility exceeds ``spread/√n``.
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
        normalize_targets: The target normalisation it trains with when ``wrap`` is not told
            (a saved policy's is the one it was trained with, :func:`~.store.load_policy`).

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
    scale_free = True  # each term's loss is divided by its (bounded) level
    #: The card name and version of the policy folder it was loaded from
    #: (:func:`~lossrag.policy.store.load_policy`; with settings changed, a name that says so
    #: and no version): what runs record it by.
    source: tuple[str, str | None] | None = None

    def __init__(
        self,
        *,
        k: int = 4,
        explore: int = 1,
        refresh_every: int = REFRESH_EVERY,
        retrieve_every: int = RETRIEVE_EVERY,
        retrieve_backoff: int = 8,
        patience: int = 3,
        patience_on: int = 1,
        spread: float = 1.0,
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
        normalize_targets: bool | Literal["auto"] = False,
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
        if normalize_targets not in (True, False, "auto"):
            raise ValueError(
                f"LossRAG: normalize_targets must be True, False or 'auto', got "
                f"{normalize_targets!r}."
            )
        self.normalize_targets = normalize_targets
        self.max_ratio, self.scale_floor = max_ratio, scale_floor
        self.k, self.explore, self.refresh_every = k, explore, refresh_every
        self.retrieve_every, self.retrieve_backoff = retrieve_every, retrieve_backoff
        self.floor, self.temperature, self.max_terms = floor, temperature, max_terms
        self.prior = prior or Prior()
        self.smoothing = smoothing
        self.total_steps = total_steps
        self.index = index
        self.correction = correction or Correction(FEATURES)
        self.gates = Gates(patience, patience_on=patience_on, spread=spread)
        self.meta_lr, self.rank_weight = meta_lr, rank_weight
        self.learner = CorrectionLearner(self.correction, meta_lr, rank_weight)

    # ------------------------------------------------------------------ set-up
    def bind(self, tasks: list[Task]) -> None:
        """Prepare for ``tasks``: each starts with its natural loss as its only active term."""
        self.index = self.index if self.index is not None else default_index()
        self.tasks = {t.name: t for t in tasks}
        self.natural: dict[str, str] = {}
        self.library = TermLosses()
        for t in tasks:
            if t.kind not in self.index.kinds():
                raise ValueError(
                    f"Task {t.name!r}: the loss library has no loss for {t.kind!r} tasks."
                )
            spec = registry.spec(t.loss or NATURAL_LOSS[t.kind])
            entry = Entry(spec.name, spec.check_params(t.loss_params), t.kind)
            self.library.entries[entry.id] = entry
            self.natural[t.name] = entry.id
        self.active: dict[str, list[str]] = {t.name: [self.natural[t.name]] for t in tasks}
        self.tracker = LossTracker(floor=self.scale_floor, max_ratio=self.max_ratio)
        self.scores: dict[TermKey, float] = {}
        self.weights: dict[TermKey, float] = {}
        self.multipliers: dict[TermKey, float] = {}
        self.smoothed: dict[str, list[float]] = {}
        self.schedule = Schedule(self.refresh_every, self.retrieve_every, self.retrieve_backoff)
        self.rank = 0.0
        self.candidates: dict[str, list[Candidate]] = {}
        self._scored: Scored | None = None
        #: The tasks whose query losses online meta-steps lower (``None``: no query stream).
        self.query_tasks: frozenset[str] | None = None
        self.notes: dict[TermKey, str] = {}
        #: The terms the last refresh's rescue switched (:meth:`_rescue`), with why.
        self.rescues: dict[TermKey, str] = {}
        self.gross: dict[str, float] = {}
        self.toward: dict[str, str] = {}  # task -> the entry its gross errors mislead least

    def terms(self) -> list[TermKey]:
        """The active terms, tasks in order."""
        return [TermKey(task, e) for task, ids in self.active.items() for e in ids]

    def candidate_keys(self) -> list[TermKey]:
        """Every candidate of the last retrieval, in :attr:`candidates` order."""
        return [TermKey(t, c.entry) for t, cands in self.candidates.items() for c in cands]

    # ------------------------------------------------------------------ every step
    def term_losses(
        self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor], features: Tensor | None
    ) -> list[Tensor]:
        """Mean loss of every active term, in :meth:`terms` order, each a scalar with its graph."""
        return [self._term(key, outputs, targets, features) for key in self.terms()]

    def _term(
        self,
        key: TermKey,
        outputs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        features: Tensor | None,
    ) -> Tensor:
        return self.library.loss(self.tasks[key.task], key.loss, outputs, targets, features)

    def observe(self, step: int, values: list[float], held: Collection[TermKey] = ()) -> None:
        """Fold this step's term losses (in :meth:`terms` order) into the trackers, but those of
        the terms ``held``."""
        losses = zip(self.terms(), values, strict=True)
        self.tracker.update(step, {key: v for key, v in losses if key not in held})

    def coefficients(self, like: Tensor, terms: list[TermKey]) -> Tensor:
        """``w_i / scale_i`` for ``terms`` (the active terms when this step's losses were
        taken; one switched off since gets 0), ``scale_i`` the bounded loss scale
        (:meth:`LossTracker.scales`): the gradient weights of this step, also stored in
        :attr:`multipliers`. The bound compares the natural losses' levels only: a robust loss
        switched on for gross errors plateaus at their constant share and, compared too, would
        hold every other task back (``mnist1d-outliers``: class accuracy 0.56 -> 0.51). A task
        whose natural loss is switched off keeps its natural loss's last level there: without
        it, the bound of the other tasks jumps when a switch removes the slowest task's loss
        (digits with 40 % flipped digit labels: the regressions' multipliers 4-5 -> 30-76)."""
        naturals = [TermKey(task, loss) for task, loss in self.natural.items()]
        scales = self.tracker.scales(terms, among=naturals)
        values = weighing.coefficients(self.weights, terms, scales, len(self.tasks))
        self.multipliers = dict(zip(terms, values, strict=True))
        return like.new_tensor(values)

    def due(self, step: int) -> bool:
        """Whether this step refreshes the context, retrieval and scores."""
        return self.schedule.due(step)

    def fail(self, keys: list[TermKey]) -> str:
        """Switch off, for good, switched-on terms whose loss came out non-finite (the step goes
        on without them; :class:`~lossrag.policy.gates.Gates` keeps them off); the note."""
        self.notes.update(self.gates.fail(self.active, self.natural, keys))
        self._reweigh()
        return "switched off, non-finite loss: " + ", ".join(f"{k.task}:{k.loss}" for k in keys)

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
        retrieve = self.schedule.start(step)
        context = self._context(step, features, losses)
        first = not self.candidates
        if retrieve or first:
            self.rank = effective_rank(features)  # the correction's global feature
            self.candidates = {
                name: self._measure(self.tasks[name], outputs, targets, features)
                for name in self.tasks
            }
        scored = self._score(step, context)
        ctx = {n: _recorded(v) for n, v in context.items()}
        for name, share in self.gross.items():
            ctx[name]["gross_share"] = share
        listed: list[Term] = []
        if retrieve:
            listed = self._update(scored, gate=not first)
            self.schedule.retrieved()
        else:
            self.scores.update(zip(self.candidate_keys(), scored, strict=True))
            self._reweigh()
        if self._rescue(outputs, targets):  # last: the gates cannot undo it at once
            listed = self._with_rescues(listed)
        return listed, ctx

    def _rescue(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> bool:
        """Switch a regression task's natural loss on again where only redescending losses are
        on and they see a minority of this batch (:func:`.rescue.rescue`; the switched terms'
        gates start over); whether one was (its note in :attr:`rescues` until the next
        refresh)."""
        self.rescues = rescue(
            self.active,
            self.natural,
            self.tasks,
            self.library,
            self.scores,
            self.max_terms,
            outputs,
            targets,
        )
        for key, why in self.rescues.items():
            self.gates.force(key, on=why.startswith("on:"))
        if self.rescues:
            self.schedule.gates_moved = True
            self._reweigh()
        return bool(self.rescues)

    def _with_rescues(self, listed: list[Term]) -> list[Term]:
        """``listed`` with the terms :meth:`_rescue` just switched, as they are now, and why."""
        switched = {
            key: Term.model_construct(
                task=key.task,
                loss=key.loss,
                weight=self.weights.get(key, 0.0),
                active=key.loss in self.active[key.task],
                score=self.scores.get(key),
                note=why,
            )
            for key, why in self.rescues.items()
        }
        return [t for t in listed if TermKey(t.task, t.loss) not in switched] + [*switched.values()]

    def _context(self, step: int, features: Tensor, losses: list[Tensor]) -> dict[str, list[float]]:
        """Per task, the context features of its first active term (and their smoothed copy)."""
        context = task_context(step, self.terms(), self.tracker, features, losses)
        smooth(self.smoothed, context, self.smoothing)  # the prior reads smoothed features
        return context

    def _score(self, step: int, context: dict[str, list[float]]) -> list[float]:
        """Prior plus correction for every candidate, in :attr:`candidates` order."""
        self._scored = candidate_rows(
            self.candidates,
            context,
            self.smoothed,
            self.active,
            self.natural,
            self.prior,
            {n: self.library.entries[ids[0]].name for n, ids in self.active.items()},
            global_features(step, self.total_steps, self.rank),
            self.gross,
            {n: t.kind for n, t in self.tasks.items()},
        )
        return scores(self._scored, self.correction)

    def _measure(
        self,
        task: Task,
        outputs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        features: Tensor,
    ) -> list[Candidate]:
        """Retrieve the task's candidates (keeping those counting towards switching on) and
        measure each on the model at this batch; fold this batch's share of corrupted samples
        (:func:`~lossrag.policy.evidence.corruption`) into the task's evidence (an average
        over retrievals, from the second)."""
        assert self.index is not None
        pending = [
            c.entry
            for c in self.candidates.get(task.name, [])
            if c.entry not in self.active[task.name]
            and self.gates.count.get(TermKey(task.name, c.entry), 0) > 0
        ]
        mask, toward = None, None
        # from the second retrieval on: before training, residuals show the targets' own tails
        # (on qm9-raw, alpha's tail read as gross errors at step 0 and switched a loss on)
        flagged = (
            corruption(task.kind, outputs[task.name], targets[task.name])
            if self.candidates and task.kind != "representation"
            else None
        )
        if flagged is not None:
            out, tgt, mask = outputs[task.name], targets[task.name], flagged.mask
            share = flagged.share
            self.gross[task.name] = 0.5 * (self.gross.get(task.name, share) + share)
            if self._evident(task.name):  # the query moves there
                if task.name not in self.toward:  # found once (~0.1 s over 207 entries)
                    entry = least_misled(self.index, task, self.library, out, tgt, mask)
                    if entry is not None:
                        self.toward[task.name] = entry
                toward = self.toward.get(task.name)
        found = search(
            self.index,
            task,
            self.active[task.name],
            self.natural[task.name],
            self.library,
            self.k,
            self.explore,
            keep=pending,
            toward=toward,
        )
        batch = (outputs, targets, features)
        return measure(task, found, self.index, self.library, self.embedder, batch, mask)

    @cached_property
    def embedder(self) -> Embedder:
        """The embedder that measures candidates on the model (made at the first retrieval)."""
        return Embedder()

    def _update(self, scored: list[float], gate: bool = True) -> list[Term]:
        """Store the scores, gate on the evidence (the utility is the score relative to the
        task's natural loss; not at the first retrieval, whose untrained model says nothing
        about the losses: on qm9-raw a candidate's gradient signal-to-noise there read 6 units
        above L2's and switched it on; with a query stream, the auxiliary tasks' natural losses
        are left to :meth:`meta_update`), recompute the weights; the candidate terms to record,
        with their utilities."""
        keys = self.candidate_keys()
        self.scores.update(zip(keys, scored, strict=True))
        self.notes = {}
        utilities = self._utilities(keys)
        if self.query_tasks is not None:  # meta_update gates the auxiliary tasks' natural losses
            auxiliary = self._auxiliary(self.query_tasks)
            utilities = [(k, u) for k, u in utilities if k not in auxiliary]
        if gate:
            self._gate(utilities)
        else:
            why = "not counted: first retrieval (untrained model)"
            self.notes = {k: why for k in keys if k.loss not in self.active[k.task]}
        self._reweigh()
        return self.candidate_terms(dict(utilities))

    def _utilities(self, keys: list[TermKey]) -> list[tuple[TermKey, float]]:
        """Each candidate's score relative to its task's natural loss; the natural loss's own
        is minus the best active alternative's, when one is better (it then goes off)."""
        natural = {n: self.scores[TermKey(n, e)] for n, e in self.natural.items()}
        rel = {k: self.scores[k] - natural[k.task] for k in keys if k.loss != self.natural[k.task]}
        best: dict[str, float] = {}
        for k, u in rel.items():
            if k.loss in self.active[k.task]:
                best[k.task] = max(best.get(k.task, 0.0), u)
        return [(k, rel[k] if k in rel else -best.get(k.task, 0.0)) for k in keys]

    def candidate_terms(self, utilities: Mapping[TermKey, float] | None = None) -> list[Term]:
        """Every candidate of the last retrieval as a record term: weight, gate, score, the note
        of its last gate change (or ``retrieved`` / ``explore`` / ``active``), utility and the
        gate's evidence so far."""
        terms = []
        for key, c in zip(self.candidate_keys(), self._listed(), strict=True):
            on = c.entry in self.active[key.task]
            note = self.notes.get(key) or ("active" if on else "retrieved")
            if note.startswith("stays off") and not self._evident(key.task):
                note = f"stays off: no corruption evidence ({self._evidence_of(key.task)})"
            if c.explore and not note.startswith(("on:", "off:")):
                note = f"explore; {note}" if note.startswith(("not", "stays")) else "explore"
            seen, mean = self.gates.evidence.get(key, (None, None))
            terms.append(
                Term.model_construct(
                    task=key.task,
                    loss=key.loss,
                    weight=self.weights.get(key, 0.0),
                    active=on,
                    score=self.scores.get(key),
                    note=note,
                    utility=None if utilities is None else utilities.get(key),
                    seen=seen,
                    mean_utility=mean,
                )
            )
        return terms

    def _evident(self, task: str) -> bool:
        """Whether the task's corruption evidence is above its kind's floor (:meth:`_measure`)."""
        return self.gross.get(task, 0.0) > self.prior.floor_of(self.tasks[task].kind)

    def _evidence_of(self, task: str) -> str:
        """The task's corruption evidence against its floor, in words."""
        if task not in self.gross:
            return "not measured for this task"
        floor = self.prior.floor_of(self.tasks[task].kind)
        return f"share {self.gross[task]:.3g} ≤ floor {floor:.3g}"

    def _listed(self) -> list[Candidate]:
        """Every candidate of the last retrieval, in :meth:`candidate_keys` order."""
        return [c for cands in self.candidates.values() for c in cands]

    def _reweigh(self) -> None:
        self.weights = weighing.weights(
            self.scores, self.terms(), self.natural, self.floor, self.temperature
        )

    def _gate(self, utilities: list[tuple[TermKey, float]]) -> None:
        """Update the gates from ``(term, utility)``; keep each task's floor and cap."""
        self.notes, moved = self.gates.apply(self.active, self.natural, utilities, self.max_terms)
        self.schedule.gates_moved |= moved
        for key, note in self.notes.items():
            if note.startswith("on:") and key.loss != self.natural[key.task]:
                self.tracker.join(key, TermKey(key.task, self.natural[key.task]))

    # ------------------------------------------------------------------ online meta-learning
    def candidate_losses(
        self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor], features: Tensor | None
    ) -> Tensor:
        """Every candidate's mean loss divided by its scale (as it would enter the training
        loss), in :meth:`candidate_keys` order."""
        keys = self.candidate_keys()
        tracked = [k for k in keys if k in self.tracker.ema]
        bounded = dict(zip(tracked, self.tracker.scales(tracked, among=self.terms()), strict=True))
        return torch.stack(
            [
                self._term(key, outputs, targets, features) / bounded.get(key, max(c.scale, 1e-8))
                for key, c in zip(keys, self._listed(), strict=True)
            ]
        )

    def query_losses(
        self,
        outputs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        features: Tensor | None,
        objectives: Mapping[str, Objective] | None = None,
    ) -> Tensor:
        """Each task's query loss on a query batch, in task order: its objective in
        ``objectives`` (:func:`lossrag.meta.objectives.aligned`), else its natural loss."""
        objectives = objectives or {}
        return torch.stack(
            [
                objectives[n](outputs[n], targets[n])
                if n in objectives
                else self._term(TermKey(n, e), outputs, targets, features)
                for n, e in self.natural.items()
            ]
        )

    def meta_update(
        self,
        utilities: Mapping[TermKey, float],
        per_task: Tensor | None = None,
        keep: Collection[str] = (),
    ) -> None:
        """One step on the correction Δφ from measured utilities ``u = dL_Q/dw`` per candidate
        (:class:`~lossrag.meta.learner.CorrectionLearner`), then re-gate and re-weigh. Only
        the natural losses of tasks outside ``keep`` (the auxiliary tasks: the query loss does
        not measure them) are gated here, by ``−ū``; the tasks in ``keep`` and the alternative
        losses stay as the refreshes gate them (on ``mnist1d-noisy`` letting the one-step
        utilities gate those too cost 14 points of Δm: they undervalue the slow learners)."""
        if self._scored is None:
            return
        keys = self.candidate_keys()
        if len(keys) != len(self._scored.x):
            return
        u = self.learner.normalised(keys, utilities)
        active = torch.tensor([k.loss in self.active[k.task] for k in keys])
        natural = torch.tensor([keys.index(TermKey(n, e)) for n, e in self.natural.items()])
        group = self._scored.group

        def weigh(a: Tensor) -> Tensor:
            return weighing.task_weights(
                a, group, natural, active, len(self.tasks), self.floor, self.temperature
            )

        scored = self.learner.step(self._scored, u, active, weigh, per_task)
        self.scores.update(zip(keys, scored, strict=True))
        auxiliary = self._auxiliary(keep)
        self._gate([(k, -v) for k, v in zip(keys, u.tolist(), strict=True) if k in auxiliary])
        self._reweigh()

    def _auxiliary(self, keep: Collection[str]) -> set[TermKey]:
        """The natural losses of the tasks outside ``keep`` (a query stream's auxiliary tasks)."""
        return {TermKey(n, e) for n, e in self.natural.items() if n not in keep}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Active sets, scores, weights, trackers, gates and Δφ as plain containers and
        tensors (:mod:`.state`)."""
        return state_of(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`, or one of an older version (:mod:`.state`)."""
        load_state(self, state)


@register_method
class LossRAGOnline(LossRAG):
    """:class:`LossRAG` that must be given a query stream (``wrap(..., query=...)``) and adapts
    its correction online from it; the name the benchmark runs online adaptation under."""

    name = "lossrag-online"
    needs_query = True
