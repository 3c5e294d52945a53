"""``lossrag.wrap`` and the :class:`Composer`: one training-step API for every weighting method."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lossrag.losses import Loss, registry
from lossrag.meta.hypergrad import Functional
from lossrag.meta.online import MetaContext, OnlineMeta, QueryStream
from lossrag.policy import LossRAG as _Composing
from lossrag.record import StepRecord, Term, TraceWriter
from lossrag.tasks import Task
from lossrag.weighting import GradMethod, LossMethod, Method, available, make_method

__all__ = ["Composer", "NonFiniteLossError", "wrap"]

_STATE_VERSION = 1


class NonFiniteLossError(RuntimeError):
    """Raised after more consecutive non-finite steps than ``max_skips`` allows."""


def wrap(
    model: nn.Module,
    tasks: Sequence[Task],
    policy: str | Method = "ew",
    shared: nn.Module | None = None,
    trace: str | os.PathLike[str] | None = None,
    *,
    seed: int | None = None,
    max_skips: int = 10,
    query: Iterable[Any] | None = None,
    meta_every: int = 5,
    optimizer: torch.optim.Optimizer | None = None,
    meta_objective: str = "sum",
    query_tasks: Sequence[str] | None = None,
) -> Composer:
    """Wrap ``model`` so that ``composer.backward(model(x), y)`` trains all ``tasks`` at once.

    Args:
        model: The multi-task model; ``model(x)`` returns ``{task name: output}``.
        tasks: The tasks, with unique names.
        policy: ``"lossrag"`` (the retrieval policy, :class:`lossrag.policy.LossRAG`, with its
            untrained prior), ``"default"`` or the path of a policy folder (a meta-trained
            policy, :func:`lossrag.policy.store.load_policy`), a weighting method name
            (``lossrag.weighting.available()``: ``ew``, ``uw``, ``dwa``, ``famo``, ``rlw``,
            ``gradnorm``, ``mgda``, ``pcgrad``, ``cagrad``, ``nashmtl``, ``imtlg``, ``upgrad``,
            ``alignedmtl``, ``imtll``, ``geometricmean``, ``stch``, ``dualproj``, ``gradvac``,
            ``fairgrad``, ``graddrop``, ``config``) or a configured method object such as
            ``lossrag.weighting.UW(lr=1e-2)``.
        shared: The shared trunk, a submodule of ``model``. Gradient-based methods work on its
            parameters, GradNorm on its last layer, representation losses on its output.
        trace: Path of a JSONL file to which every :class:`StepRecord` is appended.
        seed: Seed of the composer's own random stream (RLW, PCGrad, GradVac, GradDrop draw from
            it, never from the global one). Defaults to ``torch.initial_seed()``.
        max_skips: Consecutive non-finite steps tolerated before :class:`NonFiniteLossError`.
        query: An iterable (cycled when it runs out) of held-out ``(x, y)`` batches shaped like
            training batches. With ``policy="lossrag"`` it turns on online meta-adaptation
            (:mod:`lossrag.meta.online`): every ``meta_every`` steps the policy learns from the
            measured effect of each candidate term on the query loss.
        meta_every: Steps between meta-steps.
        meta_objective: ``"sum"`` (one query objective: the tasks' query losses, each divided
            by its running mean, summed), ``"common"`` (one per task, combined by the
            MetaWeighting min-norm common direction; one query backward and two forwards more
            per task) or ``"transfer"`` (per task, as ``common``, but a task's candidates are
            scored only by their effect on the other tasks' query losses).
        optimizer: The optimizer that steps the model; an Adam-style one lets the meta-step
            precondition its look-ahead as Adam does.
        query_tasks: Names of the tasks whose query losses the meta-step lowers (Auto-Lambda's
            primary tasks); the others are auxiliary: trained, weighted by how much they help
            those. Default: every task.

    DWA weighs by epoch-average losses: call ``composer.epoch_end()`` at the end of each epoch
    (or build ``lossrag.weighting.DWA(period=steps_per_epoch)``).

    >>> import torch, lossrag
    >>> from lossrag.models import MultiTaskMLP
    >>> tasks = [lossrag.Task("a", kind="regression"), lossrag.Task("b", kind="regression")]
    >>> model = MultiTaskMLP(3, [8], tasks)
    >>> composer = lossrag.wrap(model, tasks, policy="ew", shared=model.trunk)
    >>> x, y = torch.randn(4, 3), {"a": torch.randn(4), "b": torch.randn(4)}
    >>> record = composer.backward(model(x), y)
    >>> [t.weight for t in record.terms]
    [1.0, 1.0]
    """
    return Composer(
        model,
        tasks,
        policy,
        shared,
        trace,
        seed=seed,
        max_skips=max_skips,
        query=query,
        meta_every=meta_every,
        optimizer=optimizer,
        meta_objective=meta_objective,
        query_tasks=query_tasks,
    )


class Composer:
    """Computes every task's loss, weighs them with a method and fills ``.grad``.

    Build it with :func:`wrap`. The composer owns and steps the method's state (log-variances,
    logits, solver warm starts); the user's optimizer only ever sees the model's parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[Task],
        policy: str | Method,
        shared: nn.Module | None,
        trace: str | os.PathLike[str] | None,
        *,
        seed: int | None = None,
        max_skips: int = 10,
        query: Iterable[Any] | None = None,
        meta_every: int = 5,
        optimizer: torch.optim.Optimizer | None = None,
        meta_objective: str = "sum",
        query_tasks: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"wrap: `model` must be a torch.nn.Module, got {type(model).__name__}.")
        self.model = model
        self.tasks = _check_tasks(tasks)
        self.method = _make_policy(policy)
        self.policy_name = self.method.name or type(self.method).__name__
        composes = isinstance(self.method, _Composing)
        needs_shared = (
            self.method.per_task_gradients
            or composes
            or any(t.kind == "representation" for t in self.tasks)
        )
        self.shared = _check_shared(model, shared, self.policy_name, needs_shared)
        self._shared_ids = (
            {id(p) for p in self.shared.parameters()} if self.shared is not None else set()
        )
        self.terms: list[tuple[Task, Loss]] = [
            (t, registry.create(t.loss or "", **t.loss_params)) for t in self.tasks
        ]
        self.method.setup(len(self.terms), _last_layer(self.shared))
        if isinstance(self.method, _Composing):
            self.method.bind(self.tasks)
        if max_skips < 0:
            raise ValueError(f"wrap: max_skips must be >= 0, got {max_skips}.")
        self.max_skips = max_skips
        self._rng = (
            torch.Generator()
            .manual_seed(torch.initial_seed() if seed is None else seed)
            .get_state()
        )
        self.step = 0
        self._skips = 0
        self._features: Tensor | None = None
        self._inputs: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self._pending: tuple[tuple[Any, ...], dict[str, Any], dict[str, Tensor]] | None = None
        self._rerunning = False
        self._targets: Mapping[str, Tensor] = {}
        self._writer = TraceWriter(trace) if trace is not None else None
        self._hooks: list[Any] = []
        if self.shared is not None and (
            composes or any(t.kind == "representation" for t in self.tasks)
        ):
            self._hooks.append(self.shared.register_forward_hook(self._keep_features))
        self._meta: OnlineMeta | None = None
        self._query: QueryStream | None = None
        self._optimizer = optimizer
        if query is None and self.method.needs_query:
            raise ValueError(
                f"wrap: policy {self.policy_name!r} learns from held-out batches; pass "
                "query=<iterable of (x, y) batches> (e.g. a validation loader)."
            )
        self._query_index = _query_index(self.tasks, query_tasks)
        if query is not None:
            stream = QueryStream(query, {t.name for t in self.tasks if t.kind != "representation"})
            if isinstance(self.method, _Composing):
                self.method.meta_on = True
                self._meta = OnlineMeta(
                    model,
                    self.method,
                    stream,
                    meta_every,
                    optimizer,
                    features=self._take_features,
                    objective=meta_objective,
                    query_tasks=[self.tasks[i].name for i in self._query_index],
                )
            elif self.method.needs_query:
                self._query = stream
            else:
                raise ValueError(
                    f"wrap: policy {self.policy_name!r} does not learn from a query set; "
                    "`query=` works with 'lossrag', 'lossrag-online', 'autolambda' and "
                    "'metaweighting'."
                )
        if self.method.needs_rerun or query is not None:
            self._hooks.append(model.register_forward_pre_hook(self._keep_inputs, with_kwargs=True))

    # ------------------------------------------------------------------ the training step
    def backward(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> StepRecord:
        """Weigh this batch's task losses and accumulate the gradients into ``.grad``.

        Equivalent to ``total.backward()`` on the method's combined loss (for gradient-based
        methods: the aggregated direction on the ``shared`` parameters and the plain sum of the
        task losses on every other parameter). Bad input raises before anything changes. A step
        whose losses or per-task gradients are not finite writes no gradient, leaves the method's
        state as it was and is recorded with ``skipped=True``. A step whose weights, direction or
        combined gradient turn out non-finite is skipped the same way, but a stateful loss-based
        method may already have taken its own update. After ``max_skips`` consecutive skips
        :class:`NonFiniteLossError` is raised.
        """
        self._check_batch(outputs, targets)
        record = self._step(outputs, targets)
        if self._writer is not None:
            self._writer.write(record)
        self.step += 1
        if record.skipped:
            self._skips += 1
            if self._skips > self.max_skips:
                raise NonFiniteLossError(
                    f"{self._skips} consecutive steps skipped (last: {record.reason}); the limit "
                    f"is max_skips={self.max_skips}."
                )
        else:
            self._skips = 0
            if self.method.needs_rerun and self._inputs is not None:
                self._pending = (*self._inputs, {k: v.detach().clone() for k, v in targets.items()})
        self._inputs = None
        return record

    def _step(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> StepRecord:
        self._targets = targets
        if isinstance(self.method, _Composing):
            return self._compose_step(self.method, outputs, targets)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        losses = self._losses(outputs, targets)
        values = [float(v) for v in losses.detach().cpu().tolist()]
        timings["losses"] = time.perf_counter() - t0
        bad = [t.name for (t, _), v in zip(self.terms, values, strict=True) if not math.isfinite(v)]
        if bad:
            return self._record(
                values, None, timings, f"non-finite loss in task(s) {', '.join(bad)}"
            )
        if self.method.positive_losses:
            floors = getattr(self.method, "min_losses", None) or [0.0] * len(values)
            low = [
                f"{t.name!r} ({v:.3g} <= {b:g})"
                for (t, _), v, b in zip(self.terms, values, floors, strict=True)
                if v <= b
            ]
            if low:
                raise ValueError(
                    f"Policy {self.policy_name!r} takes the logarithm of each loss, which must "
                    f"exceed its lower bound; task(s) {', '.join(low)} do not. Use losses "
                    "bounded below by 0 (e.g. not gaussian_nll with a small sigma)."
                )
        if self._pending is not None:
            t1 = time.perf_counter()
            self._rerun()
            timings["rerun"] = time.perf_counter() - t1
        if isinstance(self.method, LossMethod):
            return self._loss_step(losses, values, timings)
        return self._grad_step(losses, values, timings)

    def _loss_step(
        self, losses: Tensor, values: list[float], timings: dict[str, float]
    ) -> StepRecord:
        assert isinstance(self.method, LossMethod)
        t1 = time.perf_counter()
        note = None
        if self._query is not None and self._inputs is not None:
            self._rerunning = True  # the look-ahead's forwards are not training batches
            try:
                note = self.method.meta_step(self._meta_context(losses))
            finally:
                self._rerunning = False
                self._features = None
            timings["meta"] = time.perf_counter() - t1
        with self._own_rng():
            weights = self.method.weigh(losses)
        timings["weights"] = time.perf_counter() - t1
        if not bool(torch.isfinite(weights).all()):
            return self._record(values, None, timings, "non-finite weights")
        t2 = time.perf_counter()
        params = [p for p in self.model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(
            losses, params, grad_outputs=weights.detach().to(losses), allow_unused=True
        )
        if not _all_finite(grads):
            return self._record(values, None, timings, "non-finite gradient")
        _accumulate(params, grads)
        timings["backward"] = time.perf_counter() - t2
        record = self._record(values, weights.tolist(), timings)
        record.reason = note
        return record

    def _meta_context(self, losses: Tensor) -> MetaContext:
        """The look-ahead context of a query-learning baseline at this step."""
        assert self._inputs is not None and self._query is not None
        inputs, targets = self._inputs, self._targets
        query = self._query

        def terms(call: Any, batch: Any) -> Tensor:
            (args, kwargs), y = batch
            return self._losses(call(*args, **kwargs), y)

        def query_terms(call: Any, batch: Any) -> Tensor:
            x, y = batch
            return self._losses(call(x), y)

        def per_task(params: dict[str, Tensor]) -> Tensor:
            with torch.enable_grad():
                values = Functional(self.model, query_terms)(params, query.next(like=inputs))
            return values[self._query_index]

        def gradients(
            params: dict[str, Tensor], summed: bool = False
        ) -> tuple[list[dict[str, Tensor]] | None, float]:
            values = per_task(params)
            total = float(values.detach().sum())
            if not math.isfinite(total):
                return None, total
            objectives = [values.sum()] if summed else list(values)
            rows = [
                _named(
                    params,
                    torch.autograd.grad(
                        v, list(params.values()), retain_graph=True, allow_unused=True
                    ),
                )
                for v in objectives
            ]
            return rows, total

        def gradient(params: dict[str, Tensor]) -> tuple[dict[str, Tensor] | None, float]:
            rows, total = gradients(params, summed=True)
            return (None if rows is None else rows[0]), total

        named: dict[str, Tensor] = {
            n: p for n, p in self.model.named_parameters() if p.requires_grad
        }
        return MetaContext(
            named=named,
            losses=losses,
            terms=Functional(self.model, terms),
            batch=(inputs, targets),
            optimizer=self._optimizer,
            query_gradient=gradient,
            query_gradients=gradients,
        )

    def _grad_step(
        self, losses: Tensor, values: list[float], timings: dict[str, float]
    ) -> StepRecord:
        assert isinstance(self.method, GradMethod)
        t1 = time.perf_counter()
        params = [p for p in self.model.parameters() if p.requires_grad]
        shared = [p for p in params if id(p) in self._shared_ids]
        heads = [p for p in params if id(p) not in self._shared_ids]
        rows, reached = [], [False] * len(shared)
        for loss in losses:
            grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([_flat(g, p) for g, p in zip(grads, shared, strict=True)]))
            reached = [r or g is not None for r, g in zip(reached, grads, strict=True)]
        jacobian = torch.stack(rows).float()
        timings["jacobian"] = time.perf_counter() - t1
        if not bool(torch.isfinite(jacobian).all()):
            return self._record(values, None, timings, "non-finite per-task gradient")
        t2 = time.perf_counter()
        with self._own_rng():
            direction, weights = self.method.aggregate(jacobian)
        timings["weights"] = time.perf_counter() - t2
        if not bool(torch.isfinite(direction).all()):
            return self._record(values, None, timings, "non-finite aggregated gradient")
        t3 = time.perf_counter()
        head_grads = torch.autograd.grad(losses.sum(), heads, allow_unused=True) if heads else ()
        if not _all_finite(head_grads):
            return self._record(values, None, timings, "non-finite gradient")
        sizes = [p.numel() for p in shared]
        pieces = [
            d.view_as(p).to(p.dtype, copy=True) if r else None
            for d, p, r in zip(direction.split(sizes), shared, reached, strict=True)
        ]
        _accumulate(shared, pieces)
        _accumulate(heads, head_grads)
        timings["backward"] = time.perf_counter() - t3
        return self._record(values, None if weights is None else weights.tolist(), timings)

    def _compose_step(
        self, policy: _Composing, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]
    ) -> StepRecord:
        """A step of a retrieval policy: its active terms, a refresh when due, held weights."""
        timings: dict[str, float] = {}
        features, self._features = self._features, None
        inputs = self._inputs
        utilities, note = None, None
        if self._meta is not None:  # first: its new weights and gates apply to this step
            t_meta = time.perf_counter()
            self._rerunning = True  # the meta-step's forwards are not training batches
            try:
                utilities, note = self._meta.step()
            finally:
                self._rerunning = False
                self._features = None
            timings["meta"] = time.perf_counter() - t_meta
        t0 = time.perf_counter()
        terms = policy.terms()
        parts = policy.term_losses(outputs, targets, features)
        losses = torch.stack(parts)
        values = [float(v) for v in losses.detach().cpu().tolist()]
        timings["losses"] = time.perf_counter() - t0
        bad = [f"{t}:{e}" for (t, e), v in zip(terms, values, strict=True) if not math.isfinite(v)]
        if bad:
            return self._policy_record(
                policy, terms, values, timings, f"non-finite loss in {', '.join(bad)}"
            )
        policy.observe(self.step, values)
        candidates = [] if utilities is None else policy.candidate_terms(utilities)
        context: dict[str, dict[str, float]] = {}

        if policy.due(self.step) and features is not None:
            t1 = time.perf_counter()
            try:
                with self._own_rng():
                    listed, context = policy.refresh(self.step, outputs, targets, features, parts)
                candidates = listed or candidates
            except FloatingPointError as err:  # keep the last good weights, say so
                note = f"refresh skipped ({err}); last good weights kept"
            timings["refresh"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        params = [p for p in self.model.parameters() if p.requires_grad]
        coefficients = policy.coefficients(losses, terms)
        grads = torch.autograd.grad(losses, params, grad_outputs=coefficients, allow_unused=True)
        if not _all_finite(grads):
            return self._policy_record(policy, terms, values, timings, "non-finite gradient")
        _accumulate(params, grads)
        timings["backward"] = time.perf_counter() - t2
        if self._meta is not None and self._meta.due(self.step) and inputs is not None:
            self._meta.remember(inputs, targets)
        record = self._policy_record(policy, terms, values, timings, None, candidates, context)
        if note is not None:
            record.reason = note
        return record

    def _policy_record(
        self,
        policy: _Composing,
        terms: list[tuple[str, str]],
        values: list[float],
        timings: dict[str, float],
        skipped: str | None,
        candidates: Sequence[Term] = (),
        context: dict[str, dict[str, float]] | None = None,
    ) -> StepRecord:
        """``terms``/``values``: the terms trained at this step and their losses; ``candidates``:
        the retrieved terms listed at a refresh or meta-step (they supersede ``terms``)."""
        listed = {(c.task, c.loss) for c in candidates}
        active = [
            Term.model_construct(
                task=t,
                loss=e,
                weight=policy.weights.get(f"{t}:{e}"),
                active=True,
                score=policy.scores.get(f"{t}:{e}"),
                note=None,
            )
            for t, e in terms
            if (t, e) not in listed
        ]
        first: dict[str, float] = {}
        for (t, _), v in zip(terms, values, strict=True):
            first.setdefault(t, v)
        return StepRecord.model_construct(
            step=self.step,
            method=self.policy_name,
            losses=first,
            terms=[*active, *candidates],
            skipped=skipped is not None,
            reason=skipped,
            timings=timings,
            context=context or {},
        )

    # ------------------------------------------------------------------ losses and checks
    def _check_batch(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> None:
        if not isinstance(outputs, Mapping) or not isinstance(targets, Mapping):
            raise TypeError(
                "Composer.backward: outputs and targets must be dicts {task name: tensor}, got "
                f"{type(outputs).__name__} and {type(targets).__name__}."
            )
        heads = {t.name for t in self.tasks if t.kind != "representation"}
        _same_keys("outputs", set(outputs), heads)
        _same_keys("targets", set(targets), heads)
        for task in self.tasks:
            if task.kind != "representation":
                task.check(outputs[task.name], targets[task.name])
                if not outputs[task.name].requires_grad:
                    raise ValueError(
                        f"Task {task.name!r}: its output does not require grad (computed under "
                        "torch.no_grad() or detached?); nothing could be trained."
                    )

    def _losses(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> Tensor:
        values = []
        for task, loss in self.terms:
            if task.kind == "representation":
                if self._features is None:
                    raise ValueError(
                        f"Task {task.name!r} (representation): `shared` produced no output in "
                        "this forward; call model(x) before composer.backward."
                    )
                value = loss(self._features.flatten(1), targets[task.positives or ""])
            else:
                value = loss(outputs[task.name], targets[task.name])
            values.append(value if value.dim() == 0 else value.mean())
        self._features = None
        return torch.stack(values)

    def _rerun(self) -> None:
        """Re-evaluate the previous batch after the optimizer step (FAMO's weight update): one
        no-grad forward with the model's buffers restored and the global RNG left untouched."""
        assert self._pending is not None
        args, kwargs, targets = self._pending
        self._pending = None
        # The rerun's forward writes running statistics into stand-in copies of the buffers, so the
        # originals (which this step's graph may have saved) are never modified.
        originals = [
            (m, name, b)
            for m in self.model.modules()
            for name, b in m._buffers.items()
            if b is not None
        ]
        for m, name, b in originals:
            m._buffers[name] = b.clone()
        self._rerunning = True
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                outputs = self.model(*args, **kwargs)
                after = self._losses(outputs, targets)
        finally:
            self._rerunning = False
            for m, name, b in originals:
                m._buffers[name] = b
        floors = getattr(self.method, "min_losses", None) or [0.0] * len(after)
        if bool(torch.isfinite(after).all()) and (
            not self.method.positive_losses or bool((after > after.new_tensor(floors)).all())
        ):
            self.method.observe_rerun(after)

    def _keep_features(self, module: nn.Module, args: Any, output: Tensor) -> None:
        self._features = output

    def _take_features(self) -> Tensor | None:
        features, self._features = self._features, None
        return features

    def _keep_inputs(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if not self._rerunning:
            self._inputs = (_copy(args), _copy(kwargs))

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run the method in full precision (autocast off) and, if it is randomised, on the
        composer's own CPU random stream (CUDA draws still come from the global CUDA stream)."""
        with contextlib.ExitStack() as stack:
            for device in ("cpu", "cuda"):
                if torch.is_autocast_enabled(device):
                    stack.enter_context(torch.autocast(device, enabled=False))
            if not self.method.randomized:
                yield
                return
            stack.enter_context(torch.random.fork_rng(devices=[]))
            torch.set_rng_state(self._rng)
            yield
            self._rng = torch.get_rng_state()

    # ------------------------------------------------------------------ records
    def _record(
        self,
        values: list[float],
        weights: list[float] | None,
        timings: dict[str, float],
        skipped: str | None = None,
    ) -> StepRecord:
        terms = [
            Term.model_construct(
                task=t.name,
                loss=loss.name,
                weight=None if weights is None else weights[i],
                active=True,
                score=None,
            )
            for i, (t, loss) in enumerate(self.terms)
        ]
        return StepRecord.model_construct(
            step=self.step,
            method=self.policy_name,
            losses={t.name: v for (t, _), v in zip(self.terms, values, strict=True)},
            terms=terms,
            skipped=skipped is not None,
            reason=skipped,
            timings=timings,
            context={},
        )

    # ------------------------------------------------------------------ state and lifecycle
    def epoch_end(self) -> None:
        """Tell the method an epoch ended (DWA rolls its epoch-average losses)."""
        self.method.epoch_end()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-for-bit (tensors, numbers, strings, lists, dicts):
        the step, the method's state, the composer's random stream and FAMO's pending batch."""
        return {
            "version": _STATE_VERSION,
            "policy": self.policy_name,
            "tasks": [t.name for t in self.tasks],
            "step": self.step,
            "skips": self._skips,
            "rng": self._rng.clone(),
            "method": self.method.state_dict(),
            "pending": self._pending,
            "meta": None if self._meta is None else self._meta.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; a state from another policy or task list is refused."""
        if not isinstance(state, Mapping) or state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"Composer.load_state_dict: not a LossRAG composer state of version "
                f"{_STATE_VERSION}."
            )
        names = [t.name for t in self.tasks]
        if state["policy"] != self.policy_name or list(state["tasks"]) != names:
            raise ValueError(
                f"Composer.load_state_dict: the state is for policy {state['policy']!r} with tasks "
                f"{list(state['tasks'])}, this composer runs {self.policy_name!r} with {names}."
            )
        self.method.load_state_dict(dict(state["method"]))
        self.step = int(state["step"])
        self._skips = int(state["skips"])
        self._rng = state["rng"].clone()
        pending = state["pending"]
        self._pending = None if pending is None else (pending[0], pending[1], pending[2])
        if self._meta is not None and state.get("meta") is not None:
            self._meta.load_state_dict(state["meta"])

    def close(self) -> None:
        """Remove the hooks from the model and close the trace."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> Composer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- helpers
def _make_policy(policy: str | Method) -> Method:
    if isinstance(policy, Method):
        return policy
    if not isinstance(policy, str):
        raise TypeError(f"wrap: `policy` must be a name or a Method, got {type(policy).__name__}.")
    if policy not in available() and (
        policy == "default" or os.sep in policy or os.path.isdir(policy)
    ):
        from lossrag.policy.store import load_policy

        return load_policy(policy)
    return make_method(policy)


def _check_tasks(tasks: Sequence[Task]) -> list[Task]:
    tasks = list(tasks)
    if not tasks:
        raise ValueError("wrap: `tasks` is empty; pass at least one lossrag.Task.")
    for t in tasks:
        if not isinstance(t, Task):
            raise TypeError(f"wrap: every task must be a lossrag.Task, got {type(t).__name__}.")
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"wrap: task names must be unique; repeated: {', '.join(dupes)}.")
    kinds = {t.name: t.kind for t in tasks}
    for t in tasks:
        if t.positives is not None and kinds.get(t.positives) != "classification":
            raise ValueError(
                f"Task {t.name!r}: positives={t.positives!r} must name a classification task of "
                f"this model (classification tasks: "
                f"{', '.join(n for n, k in kinds.items() if k == 'classification') or 'none'})."
            )
    return tasks


def _query_index(tasks: Sequence[Task], query_tasks: Sequence[str] | None) -> list[int]:
    """Positions of the tasks whose query losses the meta-step lowers."""
    names = [t.name for t in tasks if t.kind != "representation"]
    if query_tasks is None:
        return [i for i, t in enumerate(tasks) if t.name in names]
    unknown = [n for n in query_tasks if n not in names]
    if unknown or not query_tasks:
        raise ValueError(
            f"wrap: query_tasks must name at least one of the non-representation tasks "
            f"({', '.join(names)}); got {list(query_tasks)!r}."
        )
    return [i for i, t in enumerate(tasks) if t.name in query_tasks]


def _check_shared(
    model: nn.Module, shared: nn.Module | None, policy: str, needed: bool
) -> nn.Module | None:
    if shared is None:
        if needed:
            raise ValueError(
                f"wrap: policy {policy!r} or a representation task needs `shared=` (the shared "
                "trunk, e.g. shared=model.trunk): per-task gradients, GradNorm's last layer and "
                "representation losses are taken there."
            )
        return None
    if not isinstance(shared, nn.Module):
        raise TypeError(f"wrap: `shared` must be an nn.Module, got {type(shared).__name__}.")
    own = {id(p) for p in model.parameters()}
    trainable = [p for p in shared.parameters() if p.requires_grad]
    if not trainable or any(id(p) not in own for p in trainable):
        raise ValueError(
            "wrap: `shared` must hold trainable parameters of `model` (a submodule such as "
            "model.trunk); the module given has "
            + ("none." if not trainable else "parameters that are not the model's.")
        )
    return shared


def _last_layer(shared: nn.Module | None) -> list[nn.Parameter]:
    """Trainable parameters of the last submodule of ``shared`` that owns any (GradNorm's W)."""
    if shared is None:
        return []
    last: list[nn.Parameter] = []
    for module in shared.modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if own:
            last = own
    return last


def _same_keys(what: str, found: set[str], expected: set[str]) -> None:
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing task(s) {', '.join(map(repr, missing))}")
        if extra:
            parts.append(f"unknown key(s) {', '.join(map(repr, extra))}")
        raise ValueError(
            f"Composer.backward: {what} {' and '.join(parts)}; expected exactly "
            f"{', '.join(map(repr, sorted(expected)))}."
        )


def _named(params: Mapping[str, Tensor], grads: Sequence[Tensor | None]) -> dict[str, Tensor]:
    """Gradients by parameter name, zeros where nothing reached."""
    return {
        n: torch.zeros_like(p) if g is None else g
        for (n, p), g in zip(params.items(), grads, strict=True)
    }


def _flat(grad: Tensor | None, param: Tensor) -> Tensor:
    return param.new_zeros(param.numel()) if grad is None else grad.reshape(-1)


def _copy(value: Any) -> Any:
    """Detached copies of the tensors in (nested tuples, lists and dicts of) ``value``: a loader
    that reuses its buffers must not change the batch FAMO re-evaluates."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, tuple):
        return tuple(_copy(v) for v in value)
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def _all_finite(grads: Sequence[Tensor | None]) -> bool:
    """Whether every gradient is finite (one fused norm per tensor; a norm past float range also
    counts as non-finite)."""
    present = [g for g in grads if g is not None]
    return not present or bool(torch.stack(torch._foreach_norm(present)).isfinite().all())


def _accumulate(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """Add ``grads`` into ``.grad`` as ``backward()`` would (``None`` where nothing reached)."""
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        if p.grad is None:
            p.grad = g
        else:
            p.grad.add_(g)
