"""Train one problem with one weighting method: the loop shared by the demo and the benchmark."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from lossrag.bench.problems import Problem
from lossrag.bench.problems.base import Batch, Split
from lossrag.compose import wrap
from lossrag.record import StepRecord
from lossrag.weighting import Method, method_class

__all__ = ["FitResult", "fit", "query_batches"]


@dataclass
class FitResult:
    """Outcome of one training run."""

    problem: str
    method: str
    seed: int
    metrics: dict[str, float]
    steps: int
    skipped: int
    cpu_s: float
    wall_s: float


def fit(
    problem: Problem,
    policy: str | Method,
    seed: int,
    *,
    epochs: int | None = None,
    trace: str | os.PathLike[str] | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
    split: str = "test",
    only: str | None = None,
    normalize_targets: bool | Literal["auto"] | None = None,
    meta_every: int | None = None,
) -> FitResult:
    """Train ``problem.build_model(seed)`` on ``problem.load(seed).train`` with ``policy`` through
    :func:`lossrag.wrap`, then evaluate on ``split``. A method that learns from held-out batches
    gets endless shuffled batches of the validation split as its query stream, and lowers the
    query losses of the scored tasks only (junk tasks are auxiliary).

    Everything random (data order, model init, the method's own stream) follows ``seed``. Uses the
    problem's budget (epochs, batch size, Adam learning rate); ``epochs`` overrides the budget.
    ``only`` names one task to train alone (a single-task baseline: same model, data and budget;
    the other heads get no gradient and are not scored). ``normalize_targets`` goes to
    :func:`lossrag.wrap` (``None``: the method's own choice); so does ``meta_every``, the steps
    between online meta-steps (``None``: ``wrap``'s default).
    """
    torch.manual_seed(seed)
    splits = problem.load(seed)
    model = problem.build_model(seed)
    budget = problem.budget
    optimizer = torch.optim.Adam(model.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
    shared = getattr(model, "trunk", None)
    tasks = [t for t in problem.tasks if only is None or t.name == only]
    if not tasks:
        raise ValueError(
            f"fit: problem {problem.name!r} has no task {only!r} "
            f"(tasks: {', '.join(t.name for t in problem.tasks)})."
        )
    names = {t.name for t in tasks}
    needs_query = (
        policy.needs_query if isinstance(policy, Method) else method_class(policy).needs_query
    )
    composer = wrap(
        model,
        tasks,
        policy,
        shared=shared,
        trace=trace,
        seed=seed,
        query=query_batches(problem, splits.val, seed) if needs_query else None,
        optimizer=optimizer,
        query_tasks=[n for n in problem.scored if n in names] if needs_query else None,
        normalize_targets=normalize_targets,
        # the meta-steps' interval: only a method that learns from the query stream has them
        **({"meta_every": meta_every} if needs_query and meta_every is not None else {}),
    )
    order = torch.Generator().manual_seed(seed)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    skipped = 0
    try:
        for _ in range(epochs if epochs is not None else budget.epochs):
            model.train()
            for x, y in problem.train_batches(splits, order):
                optimizer.zero_grad(set_to_none=True)
                outputs = model(x)
                if only is not None:
                    outputs = {k: v for k, v in outputs.items() if k in names}
                    y = {k: v for k, v in y.items() if k in names}
                record = composer.backward(outputs, y)
                optimizer.step()
                skipped += record.skipped
                if on_step is not None:
                    on_step(record)
            composer.epoch_end()
    finally:
        composer.close()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    metrics = problem.evaluate(model, getattr(splits, split))
    if only is not None:
        metrics = {k: v for k, v in metrics.items() if k in names}
    return FitResult(
        problem=problem.name,
        method=composer.policy_name,
        seed=seed,
        metrics=metrics,
        steps=composer.step,
        skipped=skipped,
        cpu_s=cpu,
        wall_s=wall,
    )


def query_batches(problem: Problem, split: Split, seed: int) -> Iterator[Batch]:
    """Endless shuffled minibatches of ``split`` (the query stream of meta-learning methods)."""
    g = torch.Generator().manual_seed(seed + 7919)
    n, size = split.x.shape[0], problem.budget.batch_size
    while True:
        order = torch.randperm(n, generator=g)
        for i in range(0, n - size + 1, size):
            idx = order[i : i + size]
            yield split.x[idx], {k: v[idx] for k, v in split.y.items()}
