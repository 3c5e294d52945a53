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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lossrag.compose.records import Pending, make_record, method_terms
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
        losses = c.term_losses(outputs, targets)
        stats = c.sync.mean(losses.detach()).float()
        timings["losses"] = time.perf_counter() - t0
        reason, step, window = None, c.step, c.window
        if c.window_starts():
            host = None if not method.reads_losses else stats.tolist()
            if host is not None and not all(math.isfinite(v) for v in host):
                return self._skipped(losses, host, timings)
            if host is not None:
                c.check_positive(host)
            c.begin_update(timings)
            t1 = time.perf_counter()
            if c.meter is not None:
                method.observe_metrics(c.performance(outputs, targets))  # type: ignore[attr-defined]
            if method.needs_query and c.inputs is not None:
                reason = c.meta_step(losses, targets)
                timings["meta"] = time.perf_counter() - t1
            if window is not None and window.length > 1 and not method.live_losses:
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
        # A non-finite loss (on any rank) gives a zero loss whose gradient is zero: decided on
        # the device, so nothing is read back here.
        total = losses.sum() if held is None else (held * losses).sum()
        total = torch.where(torch.isfinite(stats.sum() if c.sync.active else total), total, 0.0)
        if c.window_length > 1:
            total = total / c.window_length
        names = c.pairs()

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

        return total, Pending(losses.detach(), held, make)

    @property
    def method(self) -> LossMethod:
        return self.c.method  # type: ignore[return-value]

    def end_window(self, window: _Window) -> None:
        """Redo the method's update of this optimizer step with the mean losses of all its
        micro-batches (the weights were taken at the first), as one big batch would have."""
        if window.snapshot is None or window.stats is None or window.count < 2:
            return
        self.c.restore(window.snapshot)
        with self.c.own_rng():
            self.method.weigh(window.stats / window.count)
        self.c.share_state()

    def _skipped(
        self, losses: Tensor, values: list[float], timings: dict[str, float]
    ) -> tuple[Tensor, Pending]:
        """A step with a non-finite loss: no update, a loss that gives no gradient."""
        c, names = self.c, self.c.pairs()
        record = make_record(
            c.step,
            c.policy_name,
            names,
            values,
            method_terms(names, None),
            skipped=True,
            reason=_non_finite(names, values),
            timings=timings,
        )
        c.mark_skipped()
        zero = losses.new_zeros((), requires_grad=True)
        return zero, Pending(losses.detach(), None, lambda *_: record)


class PolicyStep(Step):
    """Retrieval policies: their active terms, a refresh when due, weights held in between."""

    def loss(
        self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]
    ) -> tuple[Tensor, Pending]:
        c, policy = self.c, self.policy
        timings: dict[str, float] = {}
        features = c.take_features()
        utilities, note = None, None
        starts = c.window_starts()
        if starts and c.meta is not None:  # first: its new weights and gates apply to this step
            t_meta = time.perf_counter()
            with c.rerunning():
                utilities, note = c.meta.step()
            utilities, note = c.share_state((utilities, note))
            timings["meta"] = time.perf_counter() - t_meta
        t0 = time.perf_counter()
        raw_targets = targets
        outputs, targets = c.normalize(outputs, targets)
        terms = policy.terms()
        parts = policy.term_losses(outputs, targets, None if c.compiled else features)
        losses = torch.stack(parts)
        stats = c.sync.mean(losses.detach()).float()
        timings["losses"] = time.perf_counter() - t0
        step = c.step
        candidates: list[Term] = []
        context: dict[str, dict[str, float]] = {}
        if starts:
            values = stats.tolist()
            bad = [
                f"{t}:{e}" for (t, e), v in zip(terms, values, strict=True) if not math.isfinite(v)
            ]
            if bad:
                return self._skipped(losses, terms, values, timings, bad)
            c.begin_update(timings)
            policy.observe(c.step, values)
            if utilities is not None:
                candidates = policy.candidate_terms(utilities)
            if policy.due(c.step):
                t1 = time.perf_counter()
                refreshed = self._refresh(outputs, targets, raw_targets, features, parts, note)
                listed, context, note = c.share_state(refreshed)
                candidates = listed or candidates
                timings["refresh"] = time.perf_counter() - t1
            c.window_weights = policy.coefficients(losses, terms)
            if c.meta is not None and c.meta.due(c.step) and c.inputs is not None:
                c.meta.remember(c.kept_inputs(), targets)
        coefficients = c.window_weights
        assert coefficients is not None
        if coefficients.numel() != losses.numel():  # a gate moved inside the window
            coefficients = policy.coefficients(losses, terms)
        total = (coefficients * losses).sum() / c.window_length
        weights = losses.new_tensor([policy.weights.get(f"{t}:{e}", math.nan) for t, e in terms])

        def make(values: list[float], w: list[float] | None, ok: bool) -> StepRecord:
            record = self._record(step, terms, values, candidates, timings, context)
            record.reason = note
            return record

        return total, Pending(losses.detach(), weights, make)

    @property
    def policy(self) -> LossRAG:
        return self.c.method  # type: ignore[return-value]

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
        terms: list[tuple[str, str]],
        values: list[float],
        timings: dict[str, float],
        bad: list[str],
    ) -> tuple[Tensor, Pending]:
        record = self._record(self.c.step, terms, values, [], timings, {})
        record.skipped, record.reason = True, f"non-finite loss in {', '.join(bad)}"
        self.c.mark_skipped()
        zero = losses.new_zeros((), requires_grad=True)
        return zero, Pending(losses.detach(), None, lambda *_: record)

    def _record(
        self,
        step: int,
        terms: list[tuple[str, str]],
        values: list[float],
        candidates: Sequence[Term],
        timings: dict[str, float],
        context: dict[str, dict[str, float]],
    ) -> StepRecord:
        """``terms``/``values``: the terms trained at this step and their losses; ``candidates``:
        the retrieved terms listed at a refresh or meta-step (they supersede ``terms``)."""
        policy, listed = self.policy, {(t.task, t.loss) for t in candidates}
        multipliers: dict[str, float] = getattr(policy, "multipliers", {})
        active = [
            Term.model_construct(
                task=t,
                loss=e,
                weight=policy.weights.get(f"{t}:{e}"),
                active=True,
                score=policy.scores.get(f"{t}:{e}"),
                note=None,
                utility=None,
                multiplier=multipliers.get(f"{t}:{e}"),
            )
            for t, e in terms
            if (t, e) not in listed
        ]
        record = make_record(
            step,
            self.c.policy_name,
            terms,
            values,
            [*active, *candidates],
            timings=timings,
            context=context,
        )
        record.version = self.c.policy_version
        return record


class GradStep(Step):
    """Gradient-based methods: the aggregated direction on ``shared``, the task sum elsewhere."""

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
        c, method = self.c, self.method
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        losses = c.term_losses(outputs, targets)
        stats = c.sync.mean(losses.detach()).float()
        values = stats.tolist()
        timings["losses"] = time.perf_counter() - t0
        names = c.pairs()

        def record(weights: list[float] | None, reason: str | None = None) -> StepRecord:
            return make_record(
                c.step,
                c.policy_name,
                names,
                values,
                method_terms(names, weights),
                skipped=reason is not None,
                reason=reason,
                timings=timings,
            )

        if not all(math.isfinite(v) for v in values):
            c.mark_skipped()
            return record(None, _non_finite(names, values))
        starts = c.window_starts()
        if starts:
            c.check_positive(values)
            c.begin_update(timings)
        t1 = time.perf_counter()
        params = [p for p in c.model.parameters() if p.requires_grad]
        shared = [p for p in params if id(p) in c.shared_ids]
        heads = [p for p in params if id(p) not in c.shared_ids]
        jacobian, reached = _jacobian(losses, shared)
        jacobian = c.sync.mean(jacobian)
        timings["jacobian"] = time.perf_counter() - t1
        if not bool(torch.isfinite(jacobian).all()):
            return record(None, "non-finite per-task gradient")
        t2 = time.perf_counter()
        observe = getattr(method, "observe_losses", None)
        if observe is not None:
            observe(stats)
        with c.own_rng():
            direction, weights = method.aggregate(jacobian)
        timings["weights"] = time.perf_counter() - t2
        if not bool(torch.isfinite(direction).all()):
            return record(None, "non-finite aggregated gradient")
        t3 = time.perf_counter()
        head_grads = self._heads(losses, heads)
        if not all_finite(head_grads):
            return record(None, "non-finite gradient")
        scale = 1.0 / c.window_length
        sizes = [p.numel() for p in shared]
        pieces = [
            (d.view_as(p) * scale).to(p.dtype) if r else None
            for d, p, r in zip(direction.split(sizes), shared, reached, strict=True)
        ]
        accumulate(shared, pieces)
        accumulate(heads, [None if g is None else g * scale for g in head_grads])
        timings["backward"] = time.perf_counter() - t3
        return record(None if weights is None else weights.tolist())

    @property
    def method(self) -> GradMethod:
        return self.c.method  # type: ignore[return-value]

    def _heads(self, losses: Tensor, heads: list[torch.nn.Parameter]) -> list[Tensor | None]:
        """The heads' gradients: of the plain task sum, or of ``Σ h_i L_i`` where the method's
        reference code weighs the heads too (``heads_weighted``, ``h = head_weights()``);
        averaged over ranks."""
        if not heads:
            return []
        if getattr(self.method, "heads_weighted", False):  # Nash-MTL's α, DB-MTL's 1/L
            head_weights = self.method.head_weights()  # type: ignore[attr-defined]
            total = (head_weights.detach().to(losses) * losses).sum()
        else:
            total = losses.sum()
        grads: list[Tensor | None] = list(torch.autograd.grad(total, heads, allow_unused=True))
        if not self.c.sync.active:
            return grads
        present = [i for i, g in enumerate(grads) if g is not None]
        flat = self.c.sync.mean(torch.cat([g.reshape(-1) for g in grads if g is not None]))
        out: list[Tensor | None] = [None] * len(grads)
        for i, piece in zip(present, flat.split([heads[i].numel() for i in present]), strict=True):
            out[i] = piece.view_as(heads[i])
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


def _non_finite(names: Sequence[tuple[str, str]], values: Sequence[float]) -> str:
    bad = [t for (t, _), v in zip(names, values, strict=True) if not math.isfinite(v)]
    return f"non-finite loss in task(s) {', '.join(bad)}"


def all_finite(grads: Sequence[Tensor | None]) -> bool:
    """Whether every gradient is finite (one fused norm per tensor; a norm past float range also
    counts as non-finite)."""
    present = [g for g in grads if g is not None]
    return not present or bool(torch.stack(torch._foreach_norm(present)).isfinite().all())


def accumulate(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """Add ``grads`` into ``.grad`` as ``backward()`` would (``None`` where nothing reached)."""
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        if p.grad is None:
            p.grad = g
        else:
            p.grad.add_(g)
