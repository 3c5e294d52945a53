"""The :class:`Composer`: one training-step API for every weighting method, under every stack
(single process, DDP, autocast and ``GradScaler``, ``torch.compile``, gradient accumulation)."""

from __future__ import annotations

import contextlib
import copy
import os
import pathlib
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lossrag.compose.checks import (
    check_batch,
    check_compiled,
    check_not_empty,
    check_shared,
    check_tasks,
    last_layer,
    query_index,
    warn_raw_targets,
)
from lossrag.compose.dist import Sync, compiled_in_place, is_compiled, unwrap
from lossrag.compose.lookahead import Batch, copy_tree, meta_context, rerun, side_state
from lossrag.compose.options import Options
from lossrag.compose.performance import PerformanceMeter
from lossrag.compose.records import Pending, Recorder
from lossrag.compose.steps import GradStep, LossStep, PolicyStep, Step
from lossrag.keys import TermKey
from lossrag.losses import Loss, registry
from lossrag.record import StepRecord
from lossrag.tasks import Task
from lossrag.weighting import Method, available, make_method

__all__ = ["Composer", "NonFiniteLossError"]

_STATE_VERSION = 2


class NonFiniteLossError(RuntimeError):
    """Raised after more consecutive non-finite steps than ``max_skips`` allows."""


@dataclass
class _Window:
    """The micro-batches of one optimizer step."""

    length: int
    divide: bool = True
    count: int = 0
    skipped: bool = False
    #: Why it was skipped (the first reason given).
    reason: str | None = None
    batches: list[Batch] = field(default_factory=list)
    #: Sum of the micro-batches' (all-reduced) losses, and the method's state before its
    #: update at the first micro-batch: the update is redone with the window's mean losses.
    stats: Tensor | None = None
    snapshot: tuple[dict[str, Any], Tensor] | None = None
    #: What a step strategy gathers over the window (gradient methods: summed Jacobians).
    extra: dict[str, Any] = field(default_factory=dict)
    #: The micro-batches' target statistics (all-reduced), folded in when the window closes
    #: unless it was skipped: a skipped step leaves the normaliser as it was.
    targets: Tensor | None = None


class Composer:
    """Computes every task's loss and weighs them with a method; build it with
    :func:`lossrag.wrap`.

    The composer owns and steps the method's state (log-variances, logits, solver warm starts,
    a policy's trackers); the user's optimizer only ever sees the model's parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[Task],
        policy: str | os.PathLike[str] | Method,
        shared: nn.Module | None,
        trace: str | os.PathLike[str] | None,
        options: Options,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"wrap: `model` must be a torch.nn.Module, got {type(model).__name__}.")
        self.model, self.module, self.options = model, unwrap(model), options
        self.tasks = check_tasks(tasks)
        self.method, self.policy_name, self.policy_version = _make_policy(policy)
        composes = self.method.composes_terms
        representation = any(t.kind == "representation" for t in self.tasks)
        self.compiled = is_compiled(model)
        #: Whether the step reaches into the model's graph (features, several backwards),
        #: where a compiled model is handled apart.
        self._graph_bound = (
            representation or composes or self.method.per_task_gradients or self.method.live_losses
        )
        self._check_stack(representation)
        self.shared = check_shared(model, shared, self._needs_shared())
        self.shared_ids = (
            {id(p) for p in self.shared.parameters()} if self.shared is not None else set()
        )
        self.terms: list[tuple[Task, Loss]] = [
            (t, registry.create(t.loss or "", **t.loss_params)) for t in self.tasks
        ]
        self.method.setup(len(self.terms), last_layer(self.shared))
        if composes:
            self.method.bind(self.tasks)  # type: ignore[attr-defined]
        bind_tasks = getattr(self.method, "bind_tasks", None)
        if bind_tasks is not None:  # a curriculum schedules tasks by name
            bind_tasks([t.name for t in self.tasks])
        self.meter = (
            PerformanceMeter(self.tasks, self.policy_name)
            if getattr(self.method, "needs_metrics", False)
            else None
        )
        self.sync = Sync()
        self.strategy: Step = (
            PolicyStep(self)
            if composes
            else GradStep(self)
            if self.method.kind == "gradient"
            else LossStep(self)
        )
        seed = torch.initial_seed() if options.seed is None else options.seed
        self._rng = torch.Generator().manual_seed(seed).get_state()
        self.step = 0
        #: Epoch ends received (:meth:`epoch_end`); ``None`` after loading a state saved before
        #: they were counted, until :meth:`end_epochs_until` takes the framework's count.
        self.epochs: int | None = 0
        self._skips = 0
        self._skip_said = False  # the first skipped step is warned of, the later ones recorded
        self._window: _Window | None = None
        self.window_weights: Tensor | None = None
        self._rerun_batches: list[Batch] = []
        self._features: Tensor | None = None
        self.inputs: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self._replaying = False
        #: Whether the loss being made is returned to the user to backpropagate (:meth:`loss`).
        self.user_backward = False
        self._scale_seen: float | None = None
        self._snapshot: tuple[dict[str, Any], Tensor] | None = None
        self._hooks: list[Any] = []
        self.meta: Any = None
        self._query: Any = None
        self._query_index = query_index(self.tasks, options.query_tasks)
        self._setup_query(composes)
        # last: what touches the model or the disk comes after every check that can fail
        self.normalizer = self._target_normalizer()
        self._target_stats: Tensor | None = None
        #: The step at which target normalisation started: its first batch whose regression
        #: targets were all finite (``None``: not yet).
        self.targets_began: int | None = None
        self.recorder = self._recorder(trace)
        self._setup_hooks(composes or representation)

    def _recorder(self, trace: str | os.PathLike[str] | None) -> Recorder:
        """The recorder; one trace per run, rank 0's (every rank's records agree). A trace rank
        0 cannot write is an error on every rank (the others would wait for it at the first
        step until the process group's timeout)."""
        failure: Exception | None = None
        recorder = None
        try:
            recorder = Recorder(
                trace if self.sync.rank == 0 else None,
                self.options.trace_every,
                self._annotate,
                append=self.options.trace_append,
            )
        except Exception as err:  # any failure: every rank must hear of it (see above)
            failure = err
        error = self.sync.share(None if failure is None else str(failure))
        if failure is not None:
            raise failure
        if error is not None:
            raise ValueError(f"on rank 0: {error}")
        assert recorder is not None
        return recorder

    # ------------------------------------------------------------------ set-up
    def _check_stack(self, representation: bool) -> None:
        """Refuse what this stack cannot do before any state exists."""
        name = self.policy_name
        if self.options.scaler is not None and self.method.kind == "gradient":
            raise ValueError(
                f"wrap: scaler= works with loss-based methods; policy {name!r} is gradient-based "
                "(it aggregates per-task gradients, which a GradScaler's single scale does not "
                "cover). Train it in bf16 autocast, which needs no scaler."
            )
        if self._graph_bound and compiled_in_place(self.model):
            raise ValueError(
                f"wrap: policy {name!r} reaches into the model's graph, which a model compiled "
                "in place (model.compile()) keeps inside its compiled call; compile it as a "
                "wrapper instead, compiled = torch.compile(model), and wrap that."
            )
        if self.compiled and representation:
            raise ValueError(
                "wrap: representation tasks need the output of `shared` inside the autograd "
                "graph, which a torch.compile'd model does not expose; compile the trunk and the "
                "heads separately, or train the representation task without torch.compile."
            )
        if self.compiled and (self.method.per_task_gradients or self.method.live_losses):
            # Several backward passes through one compiled graph need its saved tensors kept.
            import torch._functorch.config as functorch_config

            functorch_config.donated_buffer = False

    def _setup_query(self, composes: bool) -> None:
        query = self.options.query
        if query is None and self.method.needs_query:
            raise ValueError(
                f"wrap: policy {self.policy_name!r} learns from held-out batches; pass "
                "query=<iterable of (x, y) batches> (e.g. a validation loader)."
            )
        if query is None:
            return
        from lossrag.meta.online import OnlineMeta, QueryStream

        stream = QueryStream(query, [t for t in self.tasks if t.kind != "representation"])
        if composes:
            query_tasks = frozenset(self.tasks[i].name for i in self._query_index)
            self.method.query_tasks = query_tasks  # type: ignore[attr-defined]
            self.meta = OnlineMeta(
                self.module,
                self.method,  # type: ignore[arg-type]
                stream,
                self.options.meta_every,
                self.options.optimizer,
                features=self.take_features,
                objective=self.options.meta_objective,
                query_tasks=sorted(query_tasks),
                query_objective=self.options.query_objective,
                normalize=self.normalize,
            )
        elif self.method.needs_query or self.meter is not None:
            self._query = stream
        else:
            raise ValueError(
                f"wrap: policy {self.policy_name!r} does not learn from a query set; "
                "`query=` works with the retrieval policies, 'autolambda', 'metaweighting' "
                "and 'perf'."
            )

    def _target_normalizer(self) -> Any:
        """PopArt statistics and heads of the regression tasks, with ``normalize_targets`` (the
        method's own choice, :attr:`Method.normalize_targets`, when it is not given)."""
        mode = self.options.normalize_targets
        if mode is None:
            mode = self.method.normalize_targets
        self.target_mode = mode
        if not mode:
            return None
        from lossrag.targets import TargetNormalizer

        normalizer = TargetNormalizer(self.tasks, auto=mode == "auto")
        normalizer.attach(self.module)
        return normalizer

    def _setup_hooks(self, features: bool) -> None:
        if self.normalizer is not None:
            self._hooks.append(self.model.register_forward_pre_hook(self._apply_targets))
        if self.shared is not None and features:
            self._hooks.append(self.shared.register_forward_hook(self._keep_features))
        if (
            self.method.needs_rerun
            or self.options.query is not None
            or ((self.compiled or self.sync.active) and self.method.composes_terms)
        ):
            self._hooks.append(
                self.model.register_forward_pre_hook(self._keep_inputs, with_kwargs=True)
            )

    def _needs_shared(self) -> str | None:
        """What needs ``shared=`` (``None``: nothing)."""
        name, method = self.policy_name, self.method
        reasons = [
            f"policy {name!r} takes per-task gradients there" if method.per_task_gradients else "",
            f"policy {name!r} reads its retrieval context from its output"
            if method.composes_terms
            else "",
            *(
                f"the representation task {t.name!r} takes its loss on its output"
                for t in self.tasks
                if t.kind == "representation"
            ),
        ]
        return "; ".join(r for r in reasons if r) or None

    # ------------------------------------------------------------------ the training step
    def loss(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> Tensor:
        """The weighted loss of this batch: a scalar whose gradient is the method's.

        Call ``.backward()`` on it (or ``scaler.scale(loss).backward()``, or return it from a
        Lightning ``training_step``); DDP reduces its gradients as usual. Loss-based methods and
        retrieval policies only (gradient-based ones: :meth:`backward`). Inside
        :meth:`accumulate` the loss is already divided by the number of micro-batches.

        Nothing is read back from the device at a step of a method whose weights do not depend
        on the losses (EW, RLW) on an accelerator: a non-finite loss gives a zero loss and no
        gradient into the model's outputs, decided on the device (so zero gradients, unless the
        model's own activations are non-finite, e.g. a NaN input: :meth:`backward` checks the
        gradients), and such skipped steps do not count towards ``max_skips``; on the CPU,
        where a read costs nothing, the step is skipped on the host (no gradient at all, and
        counted). Their target values (class indices, 0/1 labels) are checked at the first step
        only (later, an index out of range is the loss function's own error, re-raised naming
        the task), and records are read every ``trace_every`` steps or when asked. The other
        methods check the target values at every step, as :meth:`backward` does, and skip a
        non-finite step on the host, leaving their state unchanged.
        Read what happened with :attr:`last_record`.
        """
        # a method that reads its losses back syncs anyway: its targets' values are checked too
        values = self.step == 0 or self.method.reads_losses
        with self._micro_batch(outputs, targets, values=values):
            self.user_backward = True
            try:
                loss, pending = self.strategy.loss(outputs, targets)
            finally:
                self.user_backward = False
            self._keep(pending)
        return loss

    def backward(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> StepRecord:
        """Weigh this batch's task losses and accumulate the gradients into ``.grad``.

        For loss-based methods: ``self.loss(outputs, targets).backward()``, checked. For
        gradient-based methods: the aggregated direction on the ``shared`` parameters and the sum
        of the task gradients on every other parameter. Bad input raises before anything
        changes. A step whose losses or gradients are not finite writes no gradient, leaves the
        method's state as it was and is recorded with ``skipped=True`` (a step whose *gradient*
        turns out non-finite after finite losses may have updated a stateful method). After
        ``max_skips`` consecutive skips :class:`NonFiniteLossError` is raised.
        """
        with self._micro_batch(outputs, targets):
            record = self.strategy.backward(outputs, targets)
            if record.skipped:
                self.mark_skipped(record.reason)
            self._keep(record)
        self.recorder.last()  # adds a pending notice to the record just kept
        return record

    @contextlib.contextmanager
    def accumulate(self, n: int, *, divide: bool = True) -> Iterator[None]:
        """One optimizer step made of ``n`` micro-batches.

        Inside the block call :meth:`loss` (or :meth:`backward`) once per micro-batch; each
        micro-batch's loss is divided by ``n``. Loss-based methods take their weights at the
        first micro-batch and update their state once, with the mean losses of all ``n``
        (the update is redone when the window closes): weights that do not depend on the current
        losses (EW, UW, DWA, RLW) make the ``n`` micro-batches give the gradient of one batch
        ``n`` times larger; weights that do (FAMO, GLS, the retrieval policies' loss scales)
        take the first micro-batch's losses (a retrieval policy's loss trackers then take the
        mean of all ``n``, see :meth:`PolicyStep.end_window
        <lossrag.compose.steps.PolicyStep.end_window>`). FAMO's re-evaluation after the step
        covers all ``n``. Gradient-based methods sum the micro-batches' per-task gradients and
        aggregate once, when the block ends: the direction of the big batch. A micro-batch
        whose loss is not finite skips the whole optimizer step (the method's update is undone,
        the later micro-batches give no gradient). One record is kept per optimizer step. A
        micro-batch beyond the ``n``-th raises ``ValueError`` (nothing of it is counted) and
        fewer than ``n`` warn when the block ends (every gradient was divided by ``n``, a
        gradient-based method's direction and heads included), unless ``divide=False``, which
        leaves the losses undivided, for trainers that divide by the number of micro-batches
        themselves (Lightning's ``accumulate_grad_batches``, Hugging Face's
        ``gradient_accumulation_steps``).

        >>> # with composer.accumulate(4):
        >>> #     for x, y in micro_batches:
        >>> #         composer.loss(model(x), y).backward()
        >>> # optimizer.step(); optimizer.zero_grad()
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"Composer.accumulate: n must be an integer >= 1, got {n!r}.")
        if self._window is not None:
            raise RuntimeError("Composer.accumulate: windows cannot be nested.")
        self._window = _Window(n, divide)
        try:
            yield
        finally:
            window = self._window
            if 0 < window.count < n and divide:
                warnings.warn(
                    f"Composer.accumulate({n}) saw {window.count} micro-batches; each loss was "
                    f"divided by {n}. Open accumulate({window.count}) for a short last window.",
                    stacklevel=3,
                )
            self._close_window()

    @property
    def last_record(self) -> StepRecord | None:
        """The record of the last optimizer step (read from the device when asked)."""
        return self.recorder.last()

    # ------------------------------------------------------------------ window bookkeeping
    @contextlib.contextmanager
    def _micro_batch(
        self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor], values: bool = True
    ) -> Iterator[None]:
        window = self._window
        if window is not None and window.divide and window.count >= window.length:
            raise ValueError(
                f"Composer.accumulate({window.length}): a micro-batch beyond the "
                f"{window.length} of this optimizer step (each loss is divided by "
                f"{window.length}); open the next window for it, or use accumulate(n, "
                "divide=False) if your trainer divides the losses itself."
            )
        check_batch(self.tasks, outputs, targets, values)
        if not self.sync.active:
            check_not_empty(targets)
        if self.step == 0 and not self.compiled and self._graph_bound:
            check_compiled(outputs, self.policy_name)
        first = self.step == 0 and (window is None or window.count == 0)
        if first and self.normalizer is None and self.options.normalize_targets is None:
            warn_raw_targets(self.tasks, targets, self.policy_name, self.method.scale_free)
        if not self.sync.checked:
            self.sync.check(
                {
                    "policy": self.policy_name,
                    # every field, a loss's settings with their defaults: a rank with another
                    # loss, its settings or metric trained it silently (found by a user trial)
                    "tasks": [{**asdict(t), "loss_params": loss.params} for t, loss in self.terms],
                    "accumulate(n)": None if self._window is None else self._window.length,
                    "seed": self.options.seed,
                    "normalize_targets": self.target_mode,
                }
            )
            self._rng = self.sync.share(self._rng)  # one random stream on every rank
        observed = None
        if self.normalizer is not None:
            # it starts from the first batch whose regression targets are all finite: a skipped
            # first step (a NaN target) would otherwise leave μ = 0, σ = 1 for the next one
            begins = self.targets_began is None and self._finite_targets(targets)
            if begins:
                moments = self.normalizer.first_moments(targets, outputs)
                self.normalizer.begin(self.sync.sum(moments))
                self.normalizer.locate(outputs)
                if self.compiled:
                    self._warn_unseen_heads()
                self.targets_began = self.step
            if begins or (self.targets_began is not None and self.normalizer.due(self.step)):
                observed = self.normalizer.observe(targets)  # before the loss, which uses it
        own = self._window is None
        if own:
            self._window = _Window(1)
        assert self._window is not None
        try:
            yield
        except BaseException:  # bad input: nothing of this micro-batch is counted
            self.inputs = None
            if own:
                self._window = None
            raise
        try:
            if observed is not None:
                summed, stats = self.sync.sum(observed), self._window.targets
                self._window.targets = summed if stats is None else stats + summed
            if self.method.needs_rerun and self.inputs is not None:
                self._window.batches.append(
                    (copy_tree(self.inputs), {k: v.detach().clone() for k, v in targets.items()})
                )
            if self._window.skipped and not self._skip_said:  # last: a warning may raise
                self._say_skipped(targets, self._window.reason)
        finally:
            self._window.count += 1
            self.inputs = None
            if own:
                self._close_window()

    def _say_skipped(self, targets: Mapping[str, Tensor], why: str | None) -> None:
        """Warn of the first skipped step: why, and which tasks' targets are not finite when
        some are (a user trial's 1 % of NaN targets, meant as missing labels, skipped 135 of 300
        steps without a word). Reads the targets back from the device, on this step only."""
        self._skip_said = True
        bad = [
            name
            for name, t in targets.items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())
        ]
        # no collective here: under DDP no_sync() a non-finite gradient can skip one rank alone
        here = f" on rank {self.sync.rank}" if self.sync.active else ""
        if bad:
            cause = (
                f" The targets of {', '.join(map(repr, bad))} hold NaN or inf in this batch"
                f"{here}: LossRAG takes them as values, not as missing labels; drop or fill those "
                "rows."
            )
        else:  # under DDP the step is skipped on every rank, the bad rows may be on another
            cause = f" (The targets{here} are finite.)" if self.sync.active else ""
        warnings.warn(
            f"Composer: step {self.step} was skipped ({why or 'non-finite values'}): no task "
            f"trained on it.{cause} Later skipped steps are only recorded (record.skipped); "
            f"more than max_skips={self.options.max_skips} in a row raise NonFiniteLossError.",
            stacklevel=5,
        )

    def _finite_targets(self, targets: Mapping[str, Tensor]) -> bool:
        """Whether every regression target of this batch is finite, on every rank (reads the
        device: only until the normaliser has started)."""
        assert self.normalizer is not None
        names = self.normalizer.regression
        if not names:
            return True
        bad = torch.stack([~torch.isfinite(targets[n]).all() for n in names]).sum()
        return float(self.sync.sum(bad.float().reshape(1))) == 0.0

    def _warn_unseen_heads(self) -> None:
        """On a compiled model, say why no head was seen and what to do: the graph had been
        compiled without the normaliser's hooks (the same model class, earlier in the process;
        ``torch.compile`` did not recompile for hooks added later)."""
        assert self.normalizer is not None
        unseen = [n for n, why in self.normalizer.notes.items() if "no forward was seen" in why]
        if unseen:
            warnings.warn(
                f"normalize_targets: the compiled model ran a graph compiled before the target "
                f"normaliser's hooks were added, so the heads of {', '.join(map(repr, unseen))} "
                "were not found and their losses only are normalised (their outputs stay as the "
                "head computes them). Call torch._dynamo.reset() before torch.compile(model) "
                "to re-parametrise the heads.",
                stacklevel=5,
            )

    def _close_window(self) -> None:
        window, self._window = self._window, None
        if window is None or window.count == 0:
            return
        if not window.skipped:  # a skipped step keeps the last one's re-evaluation pending
            self._rerun_batches = window.batches
            if window.targets is not None:
                stats = self._target_stats
                self._target_stats = window.targets if stats is None else stats + window.targets
        self.strategy.end_window(window)
        self.recorder.release()  # the step's record is complete
        self.step += 1
        if window.skipped:
            self._skips += 1
            if self._skips > self.options.max_skips:
                last = self.recorder.last()
                self.recorder.flush()  # the trace shows the run up to the error
                why = f" The last: {last.reason}." if last is not None and last.reason else ""
                raise NonFiniteLossError(
                    f"{self._skips} consecutive steps skipped; the limit is "
                    f"max_skips={self.options.max_skips}.{why}"
                )
        else:
            self._skips = 0

    def window_starts(self) -> bool:
        """Whether this micro-batch is the first of its optimizer step."""
        return self._window is None or self._window.count == 0

    @property
    def window_length(self) -> int:
        """What each micro-batch's loss is divided by: the number of micro-batches in the
        current optimizer step (1 when the window does not divide)."""
        if self._window is None or not self._window.divide:
            return 1
        return self._window.length

    @property
    def window(self) -> _Window | None:
        """The optimizer step being built (``None`` between steps)."""
        return self._window

    def snapshot(self) -> tuple[dict[str, Any], Tensor]:
        """A copy of the method's state and of the composer's random stream."""
        return copy.deepcopy(self.method.state_dict()), self._rng.clone()

    def restore(self, snapshot: tuple[dict[str, Any], Tensor]) -> None:
        """Return to a :meth:`snapshot`."""
        state, rng = snapshot
        self.method.load_state_dict(copy.deepcopy(state))
        self._rng = rng.clone()

    def mark_skipped(self, why: str | None = None) -> None:
        """This optimizer step is skipped (``why``): no re-evaluation after it, counted toward
        max_skips; the step's record (kept from its first micro-batch) says so, and why."""
        window = self._window
        if window is None or window.skipped:
            return
        if window.count == 0 and self.options.scaler is not None:
            # skipped before the method's update: first undo an earlier step the GradScaler
            # skipped; the scale it drops for this one has no update to undo (the snapshot is
            # an earlier step's, whose update stands)
            self.undo_skipped_step()
            self._scale_seen = None
        if window.count > 0:
            record = self.recorder.last()
            if record is not None:
                record.skipped = True
                record.reason = "a later micro-batch of this optimizer step was skipped" + (
                    f" ({why})" if why else ""
                )
        window.skipped, window.reason = True, why

    def undo_skipped_step(self) -> None:
        """If the GradScaler skipped the previous optimizer step (its scale went down), return
        the method to its state before that step's update."""
        scaler = self.options.scaler
        if scaler is None:
            return
        scale = float(scaler.get_scale())
        if self._scale_seen is not None and scale < self._scale_seen and self._snapshot:
            self.restore(self._snapshot)
            self._rerun_batches = []
            self.recorder.notice = "previous step skipped by the GradScaler; method state restored"
        self._scale_seen = scale

    def begin_update(self, timings: dict[str, float]) -> None:
        """Before the method updates at this optimizer step: undo the previous step's update if
        the GradScaler skipped that step, else FAMO's re-evaluation of its batches; then keep
        the state the GradScaler may have to come back to."""
        self.undo_skipped_step()
        scaler = self.options.scaler
        if self._rerun_batches:
            t0 = time.perf_counter()
            batches, self._rerun_batches = self._rerun_batches, []
            with self.rerunning():
                after = self.sync.mean(rerun(self.module, batches, self.term_losses)).float()
            floors = after.new_tensor(self._floors(len(after)))
            if bool(torch.isfinite(after).all()) and (
                not self.method.positive_losses or bool((after > floors).all())
            ):
                self.method.observe_rerun(after)
            timings["rerun"] = time.perf_counter() - t0
        if scaler is not None:
            self._snapshot = self.snapshot()

    def share_state(self, extra: Any = None) -> Any:
        """Under DDP, every rank adopts rank 0's state for methods that learn from more than
        the all-reduced losses (GradNorm, look-aheads, the retrieval policies' refreshes), and
        rank 0's ``extra`` (what the update reported, for the records); returns ``extra``."""
        method = self.method
        if not self.sync.active or not (
            method.needs_query
            or method.live_losses
            or method.composes_terms
            or getattr(method, "needs_metrics", False)
        ):
            return extra
        state, extra = self.sync.share((method.state_dict(), extra))
        if self.sync.rank != 0:
            method.load_state_dict(state)
        return extra

    def _floors(self, n: int) -> list[float]:
        """The lower bound of each of the ``n`` losses for a method that takes log L."""
        return list(getattr(self.method, "min_losses", None) or [0.0] * n)

    def check_positive(self, values: Sequence[float]) -> None:
        """Methods that take log L need every loss above its lower bound."""
        if not self.method.positive_losses:
            return
        floors = self._floors(len(values))
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

    # ------------------------------------------------------------------ losses and forwards
    def pairs(self) -> list[TermKey]:
        """``(task, loss name)`` of every term of a baseline method."""
        return [TermKey(t.name, loss.name) for t, loss in self.terms]

    def normalize(
        self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]
    ) -> tuple[Mapping[str, Tensor], Mapping[str, Tensor]]:
        """Outputs and targets as the losses see them: the regression tasks' standardised by
        the target statistics with ``normalize_targets``, as they are otherwise."""
        if self.normalizer is None:
            return outputs, targets
        outputs, targets = dict(outputs), dict(targets)
        for name in self.normalizer.names:
            outputs[name], targets[name] = self.normalizer.normalized(
                name, outputs[name], targets[name]
            )
        return outputs, targets

    def _apply_targets(self, module: nn.Module, args: Any) -> None:
        """Before a training forward: fold the last step's target statistics in (PopArt's
        rescaling of the heads happens between steps, never inside one)."""
        between = self._window is None or self._window.count == 0
        if self.normalizer is not None and not self._replaying:
            self.normalizer.check_resumed_heads()  # once after a resume: before any rescale
        if self.normalizer is None or self._target_stats is None or self._replaying or not between:
            return
        stats, self._target_stats = self._target_stats, None
        self.normalizer.apply(stats)

    def _annotate(self) -> Callable[[StepRecord], None] | None:
        """What adds the target statistics of this step to its record, when it is read (none
        before target normalisation started: a first step skipped for a NaN target)."""
        if self.normalizer is None or self.targets_began is None:
            return None
        stats = self.normalizer.frozen()

        def annotate(record: StepRecord) -> None:
            record.targets = stats()

        return annotate

    def term_losses(
        self,
        outputs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        gate: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """The ``(K,)`` mean losses of the tasks' natural terms, with their graph (each loss's
        input passed through ``gate`` first, when given)."""
        outputs, targets = self.normalize(outputs, targets)
        through = gate or (lambda x: x)
        values = []
        for task, loss in self.terms:
            if task.kind == "representation":
                if self._features is None:
                    raise ValueError(
                        f"Task {task.name!r} (representation): `shared` produced no output in "
                        "this forward; call model(x) before the composer."
                    )
                value = loss(through(self._features.flatten(1)), targets[task.positives or ""])
            else:
                try:
                    value = loss(through(outputs[task.name]), targets[task.name])
                except (IndexError, RuntimeError) as err:  # e.g. a class index out of range
                    raise task.loss_failed(outputs[task.name], targets[task.name], err) from err
            values.append(value if value.dim() == 0 else value.mean())
        self._features = None
        return torch.stack(values)

    def meta_step(self, losses: Tensor, targets: Mapping[str, Tensor]) -> str | None:
        """A query-learning baseline's look-ahead update at this step."""
        assert self.inputs is not None and self._query is not None
        with self.rerunning():
            ctx = meta_context(
                self.module,
                losses,
                (self.inputs, dict(targets)),
                self.term_losses,
                self._query,
                self._query_index,
                self.options.optimizer,
            )
            return self.method.meta_step(ctx)

    def performance(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> Tensor:
        """Each task's performance in ``[0, 1]``: on the next query batch when ``query=`` was
        given, else on this training batch."""
        assert self.meter is not None
        if self._query is not None:
            x, targets = self._query.next(like=self.inputs)
            with self.rerunning(), torch.no_grad(), torch.random.fork_rng(devices=[]):
                outputs = torch.func.functional_call(self.module, side_state(self.module), (x,))
        return self.meter(outputs, targets)

    def eager_forward(
        self, inputs: tuple[tuple[Any, ...], dict[str, Any]] | None = None
    ) -> tuple[Mapping[str, Tensor], Tensor | None]:
        """``inputs`` (default: this step's batch) through the plain (uncompiled, unwrapped)
        module, on cloned buffers: outputs and shared features with a graph autograd can
        differentiate."""
        inputs = inputs or self.inputs
        assert inputs is not None, "the inputs hook keeps the batch"
        args, kwargs = inputs
        with self.rerunning():
            self._features = None
            outputs = torch.func.functional_call(self.module, side_state(self.module), args, kwargs)
            return outputs, self.take_features()

    def global_batch(
        self, targets: Mapping[str, Tensor]
    ) -> tuple[tuple[tuple[Any, ...], dict[str, Any]], dict[str, Tensor]]:
        """Under DDP, every rank's batch of this step concatenated in rank order (inputs as
        the model received them, targets): what one process would have trained on."""
        assert self.inputs is not None, "the inputs hook keeps the batch under DDP"
        parts: list[Any] = self.sync.gather((self.inputs, dict(targets)))
        return _concat([p[0] for p in parts]), _concat([p[1] for p in parts])

    def kept_inputs(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """A copy of this step's model inputs, safe to keep past the step."""
        assert self.inputs is not None
        return copy_tree(self.inputs)

    def take_features(self) -> Tensor | None:
        """The output of ``shared`` in the last forward (then forgotten)."""
        features, self._features = self._features, None
        return features

    @contextlib.contextmanager
    def rerunning(self) -> Iterator[None]:
        """Forwards inside are the composer's own, not training batches."""
        self._replaying = True
        try:
            yield
        finally:
            self._replaying = False
            self._features = None

    def _keep_features(self, module: nn.Module, args: Any, output: Tensor) -> None:
        self._features = output

    def _keep_inputs(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if not self._replaying:
            self.inputs = (args, kwargs)

    def own_rng(self) -> contextlib.AbstractContextManager[None]:
        """Run the method in full precision (autocast off) and, if it is randomised, on the
        composer's own CPU random stream (CUDA draws still come from the global CUDA stream)."""
        autocast = torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")
        if not autocast and not self.method.randomized:
            return contextlib.nullcontext()
        return self._own_rng()

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
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
    def _keep(self, item: Pending | StepRecord) -> None:
        """Keep the first micro-batch's record of each optimizer step (written to the trace
        when the step's window closes)."""
        if self._window is None or self._window.count == 0:
            self.recorder.keep(item)

    # ------------------------------------------------------------------ state and lifecycle
    def epoch_end(self) -> None:
        """Tell the method an epoch ended (DWA rolls its epoch-average losses, STCH counts its
        warm-up). The state a step the GradScaler skips returns to ends the epoch too."""
        if self._snapshot is not None:
            now = self.snapshot()
            self.restore(self._snapshot)
            self.method.epoch_end()
            self._snapshot = self.snapshot()
            self.restore(now)
        self.method.epoch_end()
        if self.epochs is not None:
            self.epochs += 1

    def end_epochs_until(self, completed: int) -> None:
        """Call :meth:`epoch_end` until ``completed`` epochs have ended: for a framework's
        resumed run, whose checkpoint was written at an epoch's last step, before that epoch's
        end reached the composer. A state that did not count its epochs takes ``completed``
        as its count (its method holds the epoch ends it saw)."""
        if self.epochs is None:
            self.epochs = completed
        while self.epochs < completed:
            self.epoch_end()

    def plain_state_dict(self) -> dict[str, Tensor]:
        """The model's ``state_dict()`` (of the module under DDP and ``torch.compile``) as a
        plain model in the user's units holds it: with ``normalize_targets``, the located heads
        hold the normalised head while wrapped, and here the target statistics are folded in
        (as :meth:`close` does, without changing the model). Save this for a model to use on
        its own (a best-so-far checkpoint); to resume training, save ``model.state_dict()``
        with :meth:`state_dict`."""
        if self.normalizer is None:
            return self.module.state_dict()
        return self.normalizer.plain_state_dict(self.module)

    def normalised_heads(self) -> dict[str, Tensor]:
        """The entries of the model's ``state_dict()`` that :meth:`plain_state_dict` gives in
        the user's units (the located heads' weights and biases), as they train: normalised. A
        checkpoint that holds the plain state and these resumes exactly
        (:meth:`load_normalised_heads`); the framework integrations save them so."""
        if self.normalizer is None:
            return {}
        own = self.module.state_dict()
        return {k: own[k] for k in self.normalizer.head_keys(self.module)}

    def load_normalised_heads(self, heads: Mapping[str, Tensor]) -> None:
        """Put :meth:`normalised_heads` back into the model (after its plain state was loaded
        and this composer's :meth:`load_state_dict`)."""
        with torch.no_grad():
            for key, value in heads.items():
                self.module.get_parameter(key).copy_(value)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-for-bit (tensors, numbers, strings, lists, dicts):
        the step, the method's state, the composer's random stream and FAMO's pending batches."""
        return {
            "version": _STATE_VERSION,
            "policy": self.policy_name,
            "tasks": [t.name for t in self.tasks],
            "step": self.step,
            "epochs": self.epochs,
            "skips": self._skips,
            "rng": self._rng.clone(),
            "method": self.method.state_dict(),
            "pending": list(self._rerun_batches),
            "meta": None if self.meta is None else self.meta.state_dict(),
            "meter": None if self.meter is None else self.meter.state_dict(),
            "targets": None if self.normalizer is None else self.normalizer.state_dict(),
            "target_stats": self._target_stats,
            "targets_began": self.targets_began,
            "scaler": [self._scale_seen, self._snapshot],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; a state from another policy or task list is refused."""
        if not isinstance(state, Mapping) or state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"Composer.load_state_dict: not a LossRAG composer state of version "
                f"{_STATE_VERSION}."
            )
        names = [t.name for t in self.tasks]
        # a loaded policy passed as an object was saved under its class's name before it was
        # named after its card
        loaded = getattr(self.method, "source", None) is not None
        policies = {self.policy_name, *([self.method.name] if loaded else [])}
        if state["policy"] not in policies or list(state["tasks"]) != names:
            raise ValueError(
                f"Composer.load_state_dict: the state is for policy {state['policy']!r} with tasks "
                f"{list(state['tasks'])}, this composer runs {self.policy_name!r} with {names}."
            )
        self.method.load_state_dict(dict(state["method"]))
        self.step = int(state["step"])
        epochs = state.get("epochs")  # None: a state from before epochs were counted
        self.epochs = None if epochs is None else int(epochs)
        self._skips = int(state["skips"])
        self._rng = state["rng"].to("cpu", torch.uint8).clone()  # loaded onto a device or not
        self._rerun_batches = list(state["pending"])
        if self.meta is not None and state.get("meta") is not None:
            self.meta.load_state_dict(state["meta"])
        if self.meter is not None and state.get("meter") is not None:
            self.meter.load_state_dict(state["meter"])
        implicit = self.options.normalize_targets is None
        if self.normalizer is not None and state.get("targets") is None and implicit:
            # a run the method started without normalisation (online adaptation before it took
            # normalised targets) goes on as it started
            self.normalizer.detach(self.module)
            self.normalizer, self.target_mode = None, False
        if (self.normalizer is None) != (state.get("targets") is None):
            raise ValueError(
                "Composer.load_state_dict: the state was saved with normalize_targets="
                f"{state.get('targets') is not None}, this composer has normalize_targets="
                f"{self.normalizer is not None}; the heads' parameters would be read in the "
                "wrong units."
            )
        if self.normalizer is not None:
            self.normalizer.load_state_dict(state["targets"])
            self.normalizer.attach(self.module)
            self._target_stats = state.get("target_stats")
            # a state from before this was saved: the normaliser started at step 0
            self.targets_began = state.get("targets_began", 0 if self.step > 0 else None)
        self._scale_seen, self._snapshot = state.get("scaler") or (None, None)
        self.recorder.resume(self.step)  # last: a state refused above leaves the trace as it was

    def close(self) -> None:
        """Write the remaining records, remove the hooks from the model and close the trace;
        with ``normalize_targets``, fold the target statistics back into the heads (the model
        is then a plain model in the user's units)."""
        if self.normalizer is not None:
            self.normalizer.detach(self.module)
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self.recorder.close()
        if getattr(self.method, "needs_epochs", False) and self.epochs == 0 and self.step > 0:
            warnings.warn(
                f"Policy {self.policy_name!r} counts epochs, but composer.epoch_end() was never "
                f"called in {self.step} steps (nor period= given), so it never left its first "
                "epoch (DWA: equal weights; STCH's nadir form: its warm-up). Call "
                "composer.epoch_end() after each epoch, or build it with period=steps_per_epoch.",
                stacklevel=2,
            )

    def __enter__(self) -> Composer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _concat(items: list[Any]) -> Any:
    """Concatenate matching (nested tuples, lists and dicts of) tensors along the batch axis;
    anything else is taken from the first item."""
    first = items[0]
    if isinstance(first, Tensor):
        return torch.cat([i.to(first.device) for i in items])
    if isinstance(first, tuple | list):
        return type(first)(_concat(list(z)) for z in zip(*items, strict=True))
    if isinstance(first, dict):
        return {k: _concat([i[k] for i in items]) for k in first}
    return first


def _make_policy(policy: str | os.PathLike[str] | Method) -> tuple[Method, str, str | None]:
    """The method, the name runs record it under, and the version of the trained policy behind
    it (the first 12 hex digits of its ``policy.json``'s SHA-256, which tells two policies
    trained by the same code apart; ``None`` for other methods)."""
    if isinstance(policy, Method):
        source = getattr(policy, "source", None)  # a policy loaded from a folder
        if source is not None:
            return policy, source[0], source[1]
        return policy, policy.name or type(policy).__name__, _shipped_version(policy)
    folder = isinstance(policy, os.PathLike)  # a path is a policy folder, never a name
    if folder:
        policy = os.fspath(policy)
        if not os.path.isdir(policy):
            raise FileNotFoundError(f"wrap: the policy folder {policy!r} does not exist.")
    if not isinstance(policy, str):
        raise TypeError(
            f"wrap: `policy` must be a name, a policy folder or a Method, got "
            f"{type(policy).__name__}."
        )
    if folder or (
        policy not in available()
        and (policy == "default" or os.sep in policy or os.path.isdir(policy))
    ):
        from lossrag.policy.store import load_policy

        loaded = load_policy(pathlib.Path(policy) if folder else policy)
        assert loaded.source is not None  # loaded without overrides
        return loaded, *loaded.source
    if policy not in available() and "+" not in policy:  # name the shipped policies too
        from lossrag._util import suggest
        from lossrag.policy.store import shipped_policies

        names = sorted([*available(), *(folder.name for folder in shipped_policies())])
        try:
            here = sorted(p.name for p in pathlib.Path().iterdir() if (p / "card.json").is_file())
        except OSError:  # an unreadable working directory
            here = []
        close = suggest(policy, [*names, *here])
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        folders = f"; policy folders here: {', '.join(here)}" if here else ""
        raise ValueError(
            f"Unknown policy {policy!r}: neither a method, a shipped policy nor a folder "
            f"here.{hint} Known: {', '.join(names)}{folders}."
        )
    if (pathlib.Path(policy) / "card.json").is_file():
        warnings.warn(
            f"wrap: policy {policy!r} is the method of that name; for the policy folder "
            f"{policy!r} here pass './{policy}' or a pathlib.Path.",
            UserWarning,
            stacklevel=4,
        )
    made = make_method(policy)
    return made, policy, _shipped_version(made)


def _shipped_version(method: Method) -> str | None:
    """The version of the shipped policy a method is made of (``None``: none)."""
    shipped = getattr(method, "shipped", None)
    if shipped is None:
        return None
    from lossrag.policy.store import policy_folder, read_card

    return read_card(policy_folder(shipped)).version
