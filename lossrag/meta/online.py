"""Online meta-adaptation of the retrieval policy from a stream of query batches.

Every ``every`` steps the composer remembers the parameters θ_t and the training batch. At the
next step the parameters are θ_{t+1}: the real update is the look-ahead (the *delayed* way of
``research/algorithms.md`` §2.2(f)). One forward and backward on a query batch gives
``v = ∇L_Q(θ_{t+1})`` (``L_Q`` the sum over tasks of each task's query loss, the objective
aligned with its metric by default (:mod:`lossrag.meta.objectives`), divided by its running mean
so that no task dominates by scale), and one central finite difference at θ_t along
``P v`` gives the utility of every candidate term, switched-off ones included:
``u_c = −⟨∇(L_c / scale_c)(θ_t), P v⟩`` (negative: the term would lower the query loss). The
policy then takes one step on its correction (:meth:`lossrag.policy.LossRAG.meta_update`,
:mod:`lossrag.meta.learner`) and updates its gates from the utilities. Nothing is written into
the live model.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lossrag.keys import TermKey
from lossrag.meta.hypergrad import Functional, directional
from lossrag.meta.objectives import Objective, aligned
from lossrag.tasks import Task

if TYPE_CHECKING:
    from lossrag.policy import LossRAG

__all__ = ["MetaContext", "OnlineMeta", "QueryStream"]


@dataclass
class MetaContext:
    """What a look-ahead baseline (Auto-Lambda, MetaWeighting) needs at one step.

    Attributes:
        named: The live trainable parameters by name (never written).
        losses: This step's term losses ``(K,)``, with their graph.
        terms: The term losses on ``batch`` at given parameters (functional, buffers cloned).
        batch: ``((args, kwargs), targets)`` of this step.
        optimizer: The user's optimizer, if ``wrap`` was given it.
        query_gradient: ``params -> (∇ of the summed query loss at params on the next query
            batch, that loss)``; the gradient is ``None`` when the loss is not finite.
        query_gradients: The same per task: ``params -> ([∇L_Q,t per task] or None, total)``.
    """

    named: dict[str, Tensor]
    losses: Tensor
    terms: Functional
    batch: Any
    optimizer: torch.optim.Optimizer | None
    query_gradient: Callable[[dict[str, Tensor]], tuple[dict[str, Tensor] | None, float]]
    query_gradients: Callable[[dict[str, Tensor]], tuple[list[dict[str, Tensor]] | None, float]]


class QueryStream:
    """Cycles through an iterable of ``(x, y)`` query batches, checking each against the tasks.

    Args:
        query: Batches shaped like training batches (``x`` for ``model(x)``, ``y`` a dict of
            targets); an iterable that runs out is started again, with a warning, if it can be.
        tasks: The tasks every ``y`` must hold (their targets are checked as a training
            batch's: dtypes, class indices in range, 0/1 labels).
    """

    def __init__(self, query: Iterable[Any], tasks: Sequence[Task]) -> None:
        self.query = query
        self.tasks = {t.name: t for t in tasks}
        self._it: Iterator[Any] = iter(query)
        self._cycled = False

    def next(self, like: Any = None) -> tuple[Any, dict[str, Tensor]]:
        """The next query batch (raises ValueError for an empty iterable or a malformed batch).

        ``like``: the ``(args, kwargs)`` a training step's model call received; a query input
        whose sizes after the batch dimension differ from its first argument's is refused.
        """
        try:
            batch = next(self._it)
        except StopIteration:
            self._it = iter(self.query)
            try:
                batch = next(self._it)
            except StopIteration:
                raise ValueError(
                    "wrap: the `query` iterable is empty (or a one-shot iterator that has run "
                    "out); pass a list or a re-iterable loader of (x, y) batches."
                ) from None
            if not self._cycled:
                warnings.warn(
                    "wrap: the `query` iterable ran out; starting it again.", stacklevel=3
                )
                self._cycled = True
        if not isinstance(batch, tuple | list) or len(batch) != 2:
            raise ValueError(
                "wrap: each `query` item must be an (x, y) pair like a training batch."
            )
        x, y = batch
        first = like[0][0] if like is not None and like[0] else None
        if (
            isinstance(first, Tensor)
            and isinstance(x, Tensor)
            and tuple(first.shape[1:]) != tuple(x.shape[1:])
        ):
            raise ValueError(
                f"wrap: a query batch has inputs of shape {tuple(x.shape)}; training batches "
                f"have {tuple(first.shape)} (the sizes after the batch must agree)."
            )
        if not isinstance(y, Mapping) or set(y) != set(self.tasks):
            found = sorted(y) if isinstance(y, Mapping) else type(y).__name__
            raise ValueError(
                f"wrap: a query batch has targets for {found}; the tasks are {sorted(self.tasks)}."
            )
        for name, task in self.tasks.items():
            task.check_target(y[name], " in a `query` batch")
        return x, dict(y)


class OnlineMeta:
    """The delayed look-ahead meta-step of a retrieval policy (see the module docstring).

    Args:
        model: The live model.
        policy: The bound retrieval policy.
        query: The query stream.
        every: Steps between meta-steps.
        optimizer: The user's optimizer; an Adam-style one gives the preconditioner ``P``
            (``1/(√v̂ + ε)``), otherwise ``P = I``.
        eps: Finite-difference step, relative to ``‖P v‖``.
        features: Returns (and forgets) the output of ``shared`` of the last forward.
        objective: ``sum``: one query objective, the sum of the tasks' scaled query losses.
            ``common``: one per task, combined in the policy's update by the MetaWeighting
            min-norm common direction (costs one query backward and two forwards per task).
            ``transfer``: one per task, summed with each task's effect on its own query loss
            left out (same cost as ``common``).
        query_tasks: The tasks whose query losses are lowered (default: all of the policy's).
        query_objective: ``metric``: each task's query loss is the objective aligned with its
            metric (:mod:`lossrag.meta.objectives`; its natural loss where there is none, said
            in the first meta-step's note); ``natural``: its natural loss.
        normalize: Outputs and targets as the training losses see them (the composer's target
            normalisation); the candidates' losses at the remembered batch go through it, the
            query losses are taken in the user's units (each divided by its running mean).
            With PopArt, a rescale of the heads between the remembered step and the meta-step
            (every step for the first 64, one in 16 after) leaves the finite difference at θ_t
            read through the new statistics.
    """

    def __init__(
        self,
        model: nn.Module,
        policy: LossRAG,
        query: QueryStream,
        every: int,
        optimizer: torch.optim.Optimizer | None = None,
        eps: float = 0.01,
        *,
        features: Callable[[], Tensor | None] = lambda: None,
        objective: str = "sum",
        query_tasks: Sequence[str] | None = None,
        query_objective: str = "metric",
        normalize: Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], Any] | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"wrap: meta_every must be >= 1, got {every}.")
        if objective not in ("sum", "common", "transfer"):
            raise ValueError(
                f"wrap: meta_objective must be 'sum', 'common' or 'transfer', got {objective!r}."
            )
        self.objective = objective
        self.model, self.policy, self.query, self.every = model, policy, query, every
        self.optimizer, self.eps = optimizer, eps
        self.pending: tuple[dict[str, Tensor], Any, dict[str, Tensor]] | None = None
        self.query_scale: dict[str, float] = {}
        self.take_features, self.normalize = features, normalize or (lambda o, t: (o, t))
        tasks = list(policy.tasks)
        wanted = tasks if query_tasks is None else list(query_tasks)
        self.query_index = [i for i, n in enumerate(tasks) if n in wanted]
        self.query_names = [tasks[i] for i in self.query_index]
        self.query_objective = query_objective
        self.objectives, self.note = self._objectives(query_objective)

    def _objectives(self, which: str) -> tuple[dict[str, Objective], str | None]:
        """The query tasks' metric-aligned objectives (none with ``natural``), and a note
        naming the tasks left on their natural loss."""
        if which not in ("metric", "natural"):
            raise ValueError(f"wrap: query_objective must be 'metric' or 'natural', got {which!r}.")
        if which == "natural":
            return {}, None
        found = {n: aligned(self.policy.tasks[n]) for n in self.query_names}
        missing = [f"{n} ({self.policy.tasks[n].metric})" for n, f in found.items() if f is None]
        note = (
            "query objective: the natural loss for " + ", ".join(missing) + ", whose metric has "
            "no aligned objective"
            if missing
            else None
        )
        return {n: f for n, f in found.items() if f is not None}, note

    def due(self, step: int) -> bool:
        """Whether this step's batch and parameters are remembered for a meta-step."""
        return step % self.every == 0

    def remember(self, inputs: Any, targets: Mapping[str, Tensor]) -> None:
        """Keep θ_t and this step's batch (``inputs`` as the model received them, ``targets``
        in the user's units)."""
        params = {
            n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad
        }
        self.pending = (params, inputs, {k: v.detach().clone() for k, v in targets.items()})

    # ------------------------------------------------------------------ the meta-step
    def step(self) -> tuple[dict[TermKey, float] | None, str | None]:
        """Run the pending meta-step at the current parameters θ_{t+1}: ``(utilities by term,
        None)``, or ``(None, why)`` when it was skipped (non-finite values)."""
        if self.pending is None:
            return None, None
        previous, inputs, targets = self.pending
        self.pending = None
        query_x, query_y = self.query.next(like=inputs)
        directions, query_loss = self._query_gradient(query_x, query_y)
        if directions is None:
            return None, f"meta-step skipped (non-finite query loss {query_loss})"
        keys = self.policy.candidate_keys()
        terms = Functional(self.model, lambda call, batch: self._candidates(call, batch))
        rows = torch.stack(
            [
                -directional(terms, previous, (inputs, targets), v, "central", self.eps)
                for v in directions
            ]
        )
        if not bool(torch.isfinite(rows).all()):
            return None, "meta-step skipped (non-finite utilities)"
        if self.objective == "transfer":  # drop each task's effect on its own query loss
            owners = [k.task for k in keys]
            rows = rows * rows.new_tensor([[o != q for o in owners] for q in self.query_names])
        utilities = dict(zip(keys, rows.sum(0).tolist(), strict=True))
        per_task = None if self.objective != "common" else rows.to(torch.float32)
        self.policy.meta_update(utilities, per_task, keep=set(self.query_names))
        note, self.note = self.note, None  # said once, at the first meta-step
        return utilities, note

    def _forward(self, call: Any, inputs: Any) -> tuple[Mapping[str, Tensor], Tensor | None]:
        args, kwargs = inputs
        self.take_features()
        outputs = call(*args, **kwargs)
        return outputs, self.take_features()

    def _candidates(self, call: Any, batch: Any) -> Tensor:
        inputs, targets = batch
        outputs, features = self._forward(call, inputs)
        outputs, targets = self.normalize(outputs, targets)
        return self.policy.candidate_losses(outputs, targets, features)

    def _query_gradient(
        self, x: Any, y: dict[str, Tensor]
    ) -> tuple[list[dict[str, Tensor]] | None, float]:
        """``[P ∇L_Q]`` at the current parameters (one per task with the ``common`` objective),
        or ``None`` when the query loss is not finite. Each task's query loss is divided by
        its running mean."""
        params = {
            n: p.detach().clone().requires_grad_(True)
            for n, p in self.model.named_parameters()
            if p.requires_grad
        }

        def loss(call: Any, batch: Any) -> Tensor:
            outputs, features = self._forward(call, ((batch[0],), {}))
            losses = self.policy.query_losses(outputs, batch[1], features, self.objectives)
            return losses[self.query_index]

        with torch.enable_grad():
            per_task = Functional(self.model, loss)(params, (x, y))
            values = per_task.detach().tolist()
            if not all(math.isfinite(v) for v in values):
                return None, float(sum(values))
            names = self.query_names
            for name, value in zip(names, values, strict=True):
                old = self.query_scale.get(name, abs(value))
                self.query_scale[name] = 0.9 * old + 0.1 * abs(value)
            scale = per_task.new_tensor([max(self.query_scale[n], 1e-8) for n in names])
            scaled = per_task / scale
            objectives = [scaled.sum()] if self.objective == "sum" else list(scaled)
            directions = []
            for objective in objectives:
                grads = torch.autograd.grad(
                    objective, list(params.values()), retain_graph=True, allow_unused=True
                )
                v = {
                    n: torch.zeros_like(p) if g is None else g
                    for (n, p), g in zip(params.items(), grads, strict=True)
                }
                if not all(bool(torch.isfinite(g).all()) for g in v.values()):
                    return None, float(scaled.sum().detach())
                directions.append(self._precondition(v))
        return directions, float(scaled.sum().detach())

    def _precondition(self, v: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.optimizer is None:
            return v
        by_id = {id(p): n for n, p in self.model.named_parameters()}
        out = dict(v)
        for group in self.optimizer.param_groups:
            eps = group.get("eps", 1e-8)
            betas = group.get("betas")
            for p in group["params"]:
                state = self.optimizer.state.get(p, {})
                name = by_id.get(id(p))
                if name in out and betas is not None and "exp_avg_sq" in state:
                    steps = float(state["step"])
                    v_hat = state["exp_avg_sq"] / (1 - betas[1] ** max(steps, 1.0))
                    out[name] = out[name] / (v_hat.sqrt() + eps)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The pending batch and parameters, the query objective and the query losses' running
        means."""
        return {
            "pending": self.pending,
            "query_objective": self.query_objective,
            "query_scale": dict(self.query_scale),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`. Running means of another query objective (a state from
        before the metric objectives took the natural losses) are not in this one's units: they
        start again."""
        pending = state["pending"]
        self.pending = None if pending is None else (pending[0], pending[1], pending[2])
        same = state.get("query_objective", "natural") == self.query_objective
        self.query_scale = dict(state["query_scale"]) if same else {}
