"""One step strategy per method family, behind one interface.

- :class:`LossStep`: loss-based methods (EW, UW, DWA, FAMO, RLW, IMTL-L, GLS, STCH, GradNorm,
  the query-learning baselines). ``loss()`` returns ``Σ w_i L_i``, whose gradient is the method's.
- :class:`PolicyStep`: the retrieval policies. ``loss()`` returns ``Σ w_i L_i / scale_i`` over the
  active terms; refreshes, retrievals and gates run inside it when due.
- :class:`GradStep`: gradient-based methods (MGDA, PCGrad, ...). They need the per-task
  gradients of the shared parameters, so only ``backward()`` exists: it writes the aggregated
  direction into the shared parameters' ``.grad`` and the plain (or, where the method's reference
  code does so, the weighted) sum of the task gradients into every other parameter's.

Under DDP the statistics every method learns from are all-reduced first (the losses; for gradient
methods the per-task gradients and the heads' gradients), so that every rank computes the same
weights and direction. A method that learns from more than the losses (GradNorm's gradient
norms, a policy's refresh, a look-ahead) takes its update on every rank and then adopts rank 0's
state, so that the ranks stay bit-identical.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lossrag.compose.records import Pending, make_record, method_terms
from lossrag.keys import TermKey
from lossrag.record import StepRecord, Term

if TYPE_CHECKING:
    from lossrag.compose.composer import Composer, _Window
    from lossrag.policy import LossRAG
    from lossrag.weighting import GradMethod, LossMethod

__all__ = ["GradStep", "LossStep", "PolicyStep", "Step"]


class Step(ABC):
    """How one method family turns a batch into a loss or into gradients."""

    def __init__(self, composer: Composer) -> None:
        self.c = composer

    def end_window(self, window: _Window) -> None:
        """Called when an optimizer step's micro-batches are all in."""

    @abstractmethod
    def loss(
        self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]
    ) -> tuple[Tensor, Pending]:
        """This micro-batch's scalar to call ``backward()`` on (already divided by the
        accumulation window's length) and its pending record."""

    def backward(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> StepRecord:
        """``loss()`` then its backward, checked: a step whose losses or gradients are not
        finite leaves ``.grad`` as it was."""
        loss, pending = self.loss(outputs, targets)
        record = pending.materialise()
        if record.skipped:
            return record
        params = [p for p in self.c.model.parameters() if p.requires_grad]
        before = [None if p.grad is None else p.grad.clone() for p in params]
        t0 = time.perf_counter()
        loss.backward()
        record.timings["backward"] = time.perf_counter() - t0
        if not all_finite([p.grad for p in params]):
            for p, g in zip(params, before, strict=True):
                p.grad = g
            record.skipped, record.reason = True, "non-finite gradient"
        return record


class LossStep(Step):
    """Loss-based methods: weights from the (all-reduced) losses, once per optimizer step."""

    def loss(
        self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]
    ) -> tuple[Tensor, Pending]:
        c, method = self.c, self.method
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        # the user backpropagates the loss and nothing is read back: a non-finite step must
        # give no gradient (a GradScaler wants to see it non-finite). On the CPU a read costs
        # nothing and the step is skipped on the host; on an accelerator the gate decides on
        # the device
        guard = c.user_backward and not method.reads_losses and c.options.scaler is None
        first = next(iter(outputs.values()), None)
        on_cpu = first is None or first.device.type == "cpu"
        gate = InputGate() if guard and not on_cpu else None
        losses = c.term_losses(outputs, targets, gate)
        stats = c.sync.mean(losses.detach()).float()
        timings["losses"] = time.perf_counter() - t0
        reason, step, window = None, c.step, c.window
        names = c.pairs()
        # read on the CPU, where it is free, and in backward(), whose record reads it anyway: a
        # skipped step then leaves the method (RLW's draw) untouched
        host = stats.tolist() if method.reads_losses or on_cpu or not c.user_backward else None
        if window is not None and window.skipped:
            why = "an earlier micro-batch of this optimizer step was skipped"
            return self._skipped(losses, names, host or [math.nan] * len(names), why, timings)
        if host is not None and not all(math.isfinite(v) for v in host):
            return self._skipped(losses, names, host, _non_finite(names, host), timings)
        if c.window_starts():
            if host is not None:
                c.check_positive(host)
            c.begin_update(timings)
            t1 = time.perf_counter()
            if c.meter is not None:
                method.observe_metrics(c.performance(outputs, targets))  # type: ignore[attr-defined]
            if method.needs_query and c.inputs is not None:
                reason = c.meta_step(losses, targets)
                timings["meta"] = time.perf_counter() - t1
            if (
                window is not None
                and window.length > 1
                and not (method.live_losses or method.unit_weights)
            ):
                window.snapshot = c.snapshot()
            if not method.unit_weights:
                with c.own_rng():
                    weights = method.weigh(losses if method.live_losses else stats)
                weights = c.share_state(weights)
                c.window_weights = weights.detach().to(losses)
            timings["weights"] = time.perf_counter() - t1
        if window is not None and window.length > 1:
            window.stats = stats if window.stats is None else window.stats + stats
        held = None if method.unit_weights else c.window_weights
        # A non-finite loss (on any rank) gives a zero loss whose gradient is zero (on the CPU
        # the step is skipped here; elsewhere the gate decides on the device, nothing read back)
        total = losses.sum() if held is None else (held * losses).sum()
        finite = torch.isfinite(stats.sum() if c.sync.active else total)
        if guard and gate is None and not bool(finite):
            values = stats.tolist()
            return self._skipped(losses, names, values, _non_finite(names, values), timings)
        total = torch.where(finite, total, 0.0)
        if gate is not None:
            gate.finite = finite
        if c.window_length > 1:
            total = total / c.window_length

        def make(values: list[float], w: list[float] | None, ok: bool) -> StepRecord:
            return make_record(
                step,
                c.policy_name,
                names,
                values,
                method_terms(names, [1.0] * len(names) if w is None else w),
                skipped=not ok,
                reason=reason if ok else _non_finite(names, values),
                timings=timings,
            )

        return total, Pending(stats, held, make, finite)  # the losses of every rank, averaged

    @property
    def method(self) -> LossMethod:
        return self.c.method  # type: ignore[return-value]

    def end_window(self, window: _Window) -> None:
        """Redo the method's update of this optimizer step with the mean losses of all its
        micro-batches (the weights were taken at the first), as one big batch would have; undo
        it when a micro-batch was skipped."""
        if window.snapshot is None:
            return
        self.c.restore(window.snapshot)
        if window.skipped or window.stats is None or window.count < 2:
            return
        with self.c.own_rng():
            self.method.weigh(window.stats / window.count)
        self.c.share_state()

    def _skipped(
        self,
        losses: Tensor,
        names: list[TermKey],
        values: list[float],
        why: str,
        timings: dict[str, float],
    ) -> tuple[Tensor, Pending]:
        """A skipped micro-batch: no update, a zero loss (see :func:`skip_loss`)."""
        c = self.c
        record = make_record(
            c.step,
            c.policy_name,
            names,
            values,
            method_terms(names, None),
            skipped=True,
            reason=why,
            timings=timings,
        )
        c.mark_skipped(why)
        return skip_loss(losses, c.options.scaler is not None), Pending(
            losses.detach(), None, lambda *_: record
        )


class PolicyStep(Step):
    """Retrieval policies: their active terms, a refresh when due, weights held in between."""

    def __init__(self, composer: Composer) -> None:
        super().__init__(composer)
        self._weighted: list[TermKey] = []  # the terms the window's weights were taken for

    def loss(
        self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]
    ) -> tuple[Tensor, Pending]:
        c, policy = self.c, self.policy
        timings: dict[str, float] = {}
        features = c.take_features()
        utilities, note = None, None
        starts, window = c.window_starts(), c.window
        if starts:
            c.undo_skipped_step()
        raw_targets = targets
        # before the meta-step's forwards: the located heads map this forward's outputs
        outputs, targets = c.normalize(outputs, targets)
        if starts and c.meta is not None:  # first: its new weights and gates apply to this step
            t_meta = time.perf_counter()
            with c.rerunning():
                utilities, note = c.meta.step()
            utilities, note = c.share_state((utilities, note))
            timings["meta"] = time.perf_counter() - t_meta
        t0 = time.perf_counter()
        terms, parts, losses, values = self._term_losses(outputs, targets, features)
        bad = [k for k, v in zip(terms, values, strict=True) if not math.isfinite(v)]
        failed = [k for k in bad if k.loss != policy.natural[k.task]]
        if bad and failed == bad and not (window is not None and window.skipped):
            # a switched-on loss failed, not the task's own: go on without it (for good)
            note = "; ".join(filter(None, [note, policy.fail(failed)]))
            terms, parts, losses, values = self._term_losses(outputs, targets, features)
            bad = [k for k, v in zip(terms, values, strict=True) if not math.isfinite(v)]
        timings["losses"] = time.perf_counter() - t0
        step = c.step
        candidates: list[Term] = []
        context: dict[str, dict[str, float]] = {}
        if bad or (window is not None and window.skipped):
            why = (
                f"non-finite loss in task(s) {', '.join(dict.fromkeys(k.task for k in bad))} "
                f"(terms {', '.join(f'{k.task}:{k.loss}' for k in bad)})"
                if bad
                else "an earlier micro-batch of this optimizer step was skipped"
            )
            return self._skipped(losses, terms, values, timings, why)
        windowed = window is not None and window.length > 1
        if starts:
            c.begin_update(timings)
            self._observe(window if windowed else None, terms, values)
            if utilities is not None:
                candidates = policy.candidate_terms(utilities)
            if policy.due(c.step):
                t1 = time.perf_counter()
                refreshed = self._refresh(outputs, targets, raw_targets, features, parts, note)
                listed, context, note = c.share_state(refreshed)
                candidates = listed or candidates
                timings["refresh"] = time.perf_counter() - t1
            c.window_weights = policy.coefficients(losses, terms)
            self._weighted = terms
            if c.meta is not None and c.meta.due(c.step) and c.inputs is not None:
                c.meta.remember(c.kept_inputs(), raw_targets)
        if windowed:
            assert window is not None
            _gather(window.extra, terms, values)
        coefficients = c.window_weights
        assert coefficients is not None
        if not starts and terms != self._weighted:  # a gate moved inside the window
            coefficients = policy.coefficients(losses, terms)
        total = (coefficients * losses).sum() / c.window_length
        state = self._state()  # as of this step, for a record read later

        def make(_: list[float], w: list[float] | None, ok: bool) -> StepRecord:
            # the losses of every rank, averaged (as the policy observed them)
            record = self._record(step, terms, values, candidates, timings, context, state)
            record.reason = note
            return record

        return total, Pending(losses.detach(), None, make)

    @property
    def policy(self) -> LossRAG:
        return self.c.method  # type: ignore[return-value]

    def _observe(self, window: _Window | None, terms: list[TermKey], values: list[float]) -> None:
        """Fold an optimizer step's first term losses into the loss trackers. A normalised task
        whose first batch had no spread (one sample, or equal targets) has no loss in standard
        units while its σ is unknown (a fallback, or from a few samples; taken as ``L0``, the fresh
        head's 0.01 cut every other task's multiplier 10-25× through the bound), so its terms
        are not tracked until then (:meth:`TargetNormalizer.unsettled
        <lossrag.targets.TargetNormalizer.unsettled>`), nor divided by a loss scale.

        In an accumulation ``window``, :meth:`end_window` redoes this with the window's mean
        losses (a one-sample micro-batch's loss is no scale: as ``L0`` it gave multipliers of
        50 that swamped Adam's second moments for hundreds of steps), except at the step target
        normalisation started (step 0 but for non-finite targets) for normalised tasks, whose
        ``μ, σ`` then came from its first (finite) micro-batch alone: its loss,
        in its own standard units, is the one like a whole batch's at the start (the window's
        mean, in those provisional units, is larger). The terms of a task without spread are
        tracked from the mean of the first window after step 0 in which its σ is known."""
        policy, step, normaliser = self.policy, self.c.step, self.c.normalizer
        spreadless = set() if normaliser is None else normaliser.spreadless
        if window is None:
            unsettled = normaliser.unsettled() if normaliser is not None and spreadless else ()
            policy.observe(step, values, held=self._held(terms, unsettled))
            return
        fresh, unreferenced = policy.tracker.untracked(terms)
        held = self._held(terms, spreadless)
        policy.observe(step, values, held=held)
        started = normaliser is not None and self.c.targets_began == step
        provisional = normaliser.names if started else []
        window.extra.update(
            terms=terms,
            taken={
                k: v
                for k, v in zip(terms, values, strict=True)
                if k not in held and k.task not in provisional
            },
            before=(fresh, unreferenced),
            held=held,
            sums=[0.0] * len(values),
        )

    def _held(self, terms: list[TermKey], tasks: Collection[str]) -> list[TermKey]:
        """The untracked terms of ``tasks`` (a loss switched on mid-run joins at its task's
        level instead)."""
        if not tasks:
            return []
        tracker = self.policy.tracker
        return [
            k
            for k in terms
            if k.task in tasks and k not in tracker.ema and k not in tracker.joining
        ]

    def end_window(self, window: _Window) -> None:
        """Fold the window's mean losses into the loss trackers (see :meth:`_observe`), not its
        first micro-batch's."""
        extra, c = window.extra, self.c
        sums = extra.get("sums")
        if window.skipped or sums is None or window.count < 2:
            return
        tracker = self.policy.tracker
        mean = {key: total / window.count for key, total in zip(extra["terms"], sums, strict=True)}
        tracker.amend(c.step, extra["taken"], mean, extra["before"])
        if c.step > 0 and extra["held"] and c.normalizer is not None:
            unsettled = c.normalizer.unsettled()
            tracker.update(c.step, {k: mean[k] for k in extra["held"] if k.task not in unsettled})

    def _term_losses(
        self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor], features: Tensor | None
    ) -> tuple[list[TermKey], list[Tensor], Tensor, list[float]]:
        """The active terms, their losses (each, and stacked, with their graph) and the losses'
        values averaged over the ranks."""
        c = self.c
        terms = self.policy.terms()
        parts = self.policy.term_losses(outputs, targets, None if c.compiled else features)
        losses = torch.stack(parts)
        return terms, parts, losses, c.sync.mean(losses.detach()).float().tolist()

    def _refresh(
        self,
        outputs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        raw_targets: Mapping[str, Tensor],
        features: Tensor | None,
        parts: list[Tensor],
        note: str | None,
    ) -> tuple[list[Term], dict[str, dict[str, float]], str | None]:
        """A refresh (``outputs``/``targets`` as the losses see them). Under DDP it runs on the
        global batch (every rank's batch gathered and forwarded again), so that every rank takes
        the refresh one process would; on a compiled model on an eager forward of the batch (the
        compiled graph does not expose the shared features to autograd)."""
        c, policy = self.c, self.policy
        if c.compiled or c.sync.active:
            inputs, raw = c.global_batch(raw_targets) if c.sync.active else (None, raw_targets)
            eager, features = c.eager_forward(inputs)
            if features is not None:
                outputs, targets = c.normalize(eager, raw)
                parts = policy.term_losses(outputs, targets, features)
        if features is None:
            return [], {}, note
        try:
            with c.own_rng():
                listed, context = policy.refresh(c.step, outputs, targets, features, parts)
        except FloatingPointError as err:  # keep the last good weights, say so
            return [], {}, f"refresh skipped ({err}); last good weights kept"
        return listed, context, note

    def _skipped(
        self,
        losses: Tensor,
        terms: list[TermKey],
        values: list[float],
        timings: dict[str, float],
        why: str,
    ) -> tuple[Tensor, Pending]:
        record = self._record(self.c.step, terms, values, [], timings, {}, self._state())
        record.skipped, record.reason = True, why
        self.c.mark_skipped(why)
        return skip_loss(losses, self.c.options.scaler is not None), Pending(
            losses.detach(), None, lambda *_: record
        )

    def _state(self) -> tuple[dict[TermKey, float], dict[TermKey, float], dict[TermKey, float]]:
        """Copies of the policy's weights, scores and multipliers."""
        policy = self.policy
        multipliers: dict[TermKey, float] = getattr(policy, "multipliers", {})
        return dict(policy.weights), dict(policy.scores), dict(multipliers)

    def _record(
        self,
        step: int,
        terms: list[TermKey],
        values: list[float],
        candidates: Sequence[Term],
        timings: dict[str, float],
        context: dict[str, dict[str, float]],
        state: tuple[dict[TermKey, float], dict[TermKey, float], dict[TermKey, float]],
    ) -> StepRecord:
        """``terms``/``values``: the terms trained at this step and their losses; ``candidates``:
        the retrieved terms listed at a refresh or meta-step (they supersede ``terms``);
        ``state``: the policy's weights, scores and multipliers at that step."""
        listed = {TermKey(t.task, t.loss) for t in candidates}
        weights, scores, multipliers = state
        active = [
            Term.model_construct(
                task=key.task,
                loss=key.loss,
                weight=weights.get(key),
                active=True,
                score=scores.get(key),
                note=None,
                utility=None,
                multiplier=multipliers.get(key),
            )
            for key in terms
            if key not in listed
        ]
        listed_terms = [  # an active candidate carries its multiplier as the others do
            t.model_copy(update={"multiplier": multipliers.get(TermKey(t.task, t.loss))})
            if t.active and t.multiplier is None
            else t
            for t in candidates
        ]
        record = make_record(
            step,
            self.c.policy_name,
            terms,
            values,
            [*active, *listed_terms],
            timings=timings,
            context=context,
        )
        record.version = self.c.policy_version
        return record


class GradStep(Step):
    """Gradient-based methods: the aggregated direction on ``shared``, the task sum elsewhere.

    Inside ``accumulate(n)`` the per-task gradients of the micro-batches are summed and
    aggregated once, when the window closes: the direction of one batch ``n`` times larger.
    """

    def loss(
        self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]
    ) -> tuple[Tensor, Pending]:
        raise TypeError(
            f"Policy {self.c.policy_name!r} is gradient-based: it needs one gradient per task, "
            "so it has no single loss to call backward() on. Use "
            "composer.backward(outputs, targets) (in Lightning: manual optimization, "
            "lossrag.integrations.lightning)."
        )

    def backward(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> StepRecord:
        c = self.c
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        losses = c.term_losses(outputs, targets)
        stats = c.sync.mean(losses.detach()).float()
        values = stats.tolist()
        timings["losses"] = time.perf_counter() - t0
        names, step, window = c.pairs(), c.step, c.window

        def record(weights: list[float] | None, reason: str | None = None) -> StepRecord:
            if reason is not None:
                c.mark_skipped(reason)
            return make_record(
                step,
                c.policy_name,
                names,
                values,
                method_terms(names, weights),
                skipped=reason is not None,
                reason=reason,
                timings=timings,
            )

        if not all(math.isfinite(v) for v in values):
            return record(None, _non_finite(names, values))
        if window is not None and window.skipped:
            return record(None, "an earlier micro-batch of this optimizer step was skipped")
        if c.window_starts():
            c.check_positive(values)
            c.begin_update(timings)
        t1 = time.perf_counter()
        shared, _ = self._split()
        jacobian, reached = _jacobian(losses, shared)
        jacobian = c.sync.mean(jacobian)
        timings["jacobian"] = time.perf_counter() - t1
        if not bool(torch.isfinite(jacobian).all()):
            return record(None, "non-finite per-task gradient")
        if window is None or window.length == 1:
            t2 = time.perf_counter()
            weights, reason = self._apply(jacobian, reached, stats, lambda: self._heads(losses))
            timings["backward"] = time.perf_counter() - t2
            return record(weights, reason)
        self._collect(window, losses, stats, jacobian, reached)
        return record(None)

    def end_window(self, window: _Window) -> None:
        """Aggregate the summed per-task gradients of an accumulation window, once."""
        kept = window.extra
        if not kept or window.skipped:
            return
        n = window.count
        rows = kept.get("heads")
        # a short window: every gradient is the micro-batches' sum over the window's length, as
        # the plain heads' already is (see Composer.accumulate); the method still aggregates the
        # mean per-task gradients, the direction of the batch that came
        share = n / window.length
        weights, reason = self._apply(
            kept["jacobian"] / n,
            kept["reached"],
            kept["stats"] / n,
            lambda: None if rows is None else self._weighted_heads(rows / window.length),
            share,
        )
        record = self.c.recorder.last()
        if record is not None:
            if reason is not None:
                record.skipped, record.reason = True, reason
            elif weights is not None:
                for term, w in zip(record.terms, weights, strict=True):
                    term.weight = w

    @property
    def method(self) -> GradMethod:
        return self.c.method  # type: ignore[return-value]

    def _split(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        params = [p for p in self.c.model.parameters() if p.requires_grad]
        shared = [p for p in params if id(p) in self.c.shared_ids]
        return shared, [p for p in params if id(p) not in self.c.shared_ids]

    def _apply(
        self,
        jacobian: Tensor,
        reached: list[bool],
        stats: Tensor,
        head_grads: Callable[[], list[Tensor | None] | None],
        share: float = 1.0,
    ) -> tuple[list[float] | None, str | None]:
        """Aggregate, then write the direction (times ``share``) into the shared parameters'
        ``.grad`` and the heads' gradients (``None``: already written) into theirs:
        ``(weights, None)``, or ``(None, why)`` when skipped."""
        c, method = self.c, self.method
        observe = getattr(method, "observe_losses", None)
        if observe is not None:
            observe(stats)
        with c.own_rng():
            direction, weights = method.aggregate(jacobian)
        if not bool(torch.isfinite(direction).all()):
            return None, "non-finite aggregated gradient"
        heads = head_grads()
        if heads is not None and not all_finite(heads):
            return None, "non-finite gradient"
        shared, head_params = self._split()
        if share != 1.0:
            direction = direction * share
        sizes = [p.numel() for p in shared]
        pieces = [
            d.view_as(p).to(p.dtype) if r else None
            for d, p, r in zip(direction.split(sizes), shared, reached, strict=True)
        ]
        accumulate(shared, pieces)
        if heads is not None:
            accumulate(head_params, heads)
        return (None if weights is None else weights.tolist()), None

    def _collect(
        self, window: _Window, losses: Tensor, stats: Tensor, jacobian: Tensor, reached: list[bool]
    ) -> None:
        """Add a micro-batch's per-task gradients to its window; the heads' plain sum goes to
        ``.grad`` at once (divided by the window's length), a weighted one is kept per task."""
        kept, (_, heads) = window.extra, self._split()
        if getattr(self.method, "heads_weighted", False) and heads:
            rows = self.c.sync.mean(_jacobian(losses, heads)[0])
            kept["heads"] = rows if "heads" not in kept else kept["heads"] + rows
        else:
            grads = self._mean_over_ranks(
                torch.autograd.grad(losses.sum(), heads, allow_unused=True)
            )
            accumulate(heads, [None if g is None else g / window.length for g in grads])
        for key, value in (("jacobian", jacobian), ("stats", stats)):
            kept[key] = value if key not in kept else kept[key] + value
        kept["reached"] = [
            a or b for a, b in zip(kept.get("reached", reached), reached, strict=True)
        ]

    def _heads(self, losses: Tensor) -> list[Tensor | None]:
        """The heads' gradients: of the plain task sum, or of ``Σ h_i L_i`` where the method's
        reference code weighs the heads too (``heads_weighted``, ``h = head_weights()``);
        averaged over ranks."""
        _, heads = self._split()
        if not heads:
            return []
        if getattr(self.method, "heads_weighted", False):  # Nash-MTL's α, DB-MTL's 1/L
            head_weights = self.method.head_weights()  # type: ignore[attr-defined]
            total = (head_weights.detach().to(losses) * losses).sum()
        else:
            total = losses.sum()
        return self._mean_over_ranks(torch.autograd.grad(total, heads, allow_unused=True))

    def _weighted_heads(self, rows: Tensor) -> list[Tensor | None]:
        """``Σ h_i ∇L_i`` on the heads from their per-task gradient rows."""
        _, heads = self._split()
        h = self.method.head_weights()  # type: ignore[attr-defined]
        flat = h.detach().to(rows) @ rows
        return [
            piece.view_as(p)
            for piece, p in zip(flat.split([p.numel() for p in heads]), heads, strict=True)
        ]

    def _mean_over_ranks(self, grads: Sequence[Tensor | None]) -> list[Tensor | None]:
        """The gradients averaged over DDP ranks (one all-reduce for all of them)."""
        out = list(grads)
        present = [(i, g) for i, g in enumerate(out) if g is not None]
        if not self.c.sync.active or not present:
            return out
        flat = self.c.sync.mean(torch.cat([g.reshape(-1) for _, g in present]))
        for (i, g), piece in zip(present, flat.split([g.numel() for _, g in present]), strict=True):
            out[i] = piece.view_as(g)
        return out


def _jacobian(losses: Tensor, shared: list[torch.nn.Parameter]) -> tuple[Tensor, list[bool]]:
    """The ``(K, n)`` float32 Jacobian of the losses on the shared parameters, and which
    parameters any task reached."""
    rows, reached = [], [False] * len(shared)
    for loss in losses:
        grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    p.new_zeros(p.numel()) if g is None else g.reshape(-1)
                    for g, p in zip(grads, shared, strict=True)
                ]
            )
        )
        reached = [r or g is not None for r, g in zip(reached, grads, strict=True)]
    return torch.stack(rows).float(), reached


class InputGate:
    """Zeroes the gradient flowing into the losses' inputs when the step's loss is not finite,
    on the device: a zero loss alone does not do it, since a loss's own backward turns the zero
    into NaN where its value was (``0 · ∂ℓ/∂y`` with ``ℓ`` NaN at a NaN target). The model's
    backward from there gives zero gradients if its own activations are finite (not for a NaN
    input)."""

    def __init__(self) -> None:
        #: Whether the step's loss is finite (a 0-dim bool tensor, set once it is known).
        self.finite: Tensor | None = None

    def __call__(self, x: Tensor) -> Tensor:
        """``x``, its gradient gated (``x`` must require grad)."""
        x.register_hook(self._gate)
        return x

    def _gate(self, grad: Tensor) -> Tensor:
        return grad if self.finite is None else grad.masked_fill(~self.finite, 0.0)


def skip_loss(losses: Tensor, scaled: bool) -> Tensor:
    """The loss of a skipped step: zero, with no gradient for any parameter. With a GradScaler
    it stays on the graph (its gradients are zeros, or non-finite when the losses were, so the
    scaler sees them and skips the step); without one it is detached from the model."""
    if not scaled:
        return losses.new_zeros((), requires_grad=True)
    return torch.where(torch.isfinite(losses), losses, 0.0).sum() * 0.0


def _non_finite(names: Sequence[TermKey], values: Sequence[float]) -> str:
    bad = [t for (t, _), v in zip(names, values, strict=True) if not math.isfinite(v)]
    if not bad:  # finite losses whose weighted sum overflowed
        return "non-finite weighted sum of finite losses"
    return f"non-finite loss in task(s) {', '.join(bad)}"


def all_finite(grads: Sequence[Tensor | None]) -> bool:
    """Whether every gradient is finite (one fused norm per tensor; a norm past float range also
    counts as non-finite)."""
    present = [g for g in grads if g is not None]
    return not present or bool(torch.stack(torch._foreach_norm(present)).isfinite().all())


def _gather(extra: dict[str, Any], terms: list[TermKey], values: list[float]) -> None:
    """Add a micro-batch's term losses to its window's sums (none once the terms change: a
    switched-on loss failed inside the window)."""
    sums = extra.get("sums")
    if sums is not None and extra["terms"] == terms:
        extra["sums"] = [a + v for a, v in zip(sums, values, strict=True)]
    else:
        extra["sums"] = None


def accumulate(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """Add ``grads`` into ``.grad`` as ``backward()`` would (``None`` where nothing reached)."""
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        if p.grad is None:
            p.grad = g
        else:
            p.grad.add_(g)
