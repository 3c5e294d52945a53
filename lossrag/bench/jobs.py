"""The units of work of a benchmark: a training run, a single-task run, a cost measurement, a
run of the loss oracle's sweep.

Each job is a plain pydantic value (picklable for worker processes) with a stable ``key`` used as
its result file's name; :func:`execute` runs one in the current process with one intra-op thread
and returns its result as a JSON-able dict, with the error instead when it crashed.
"""

from __future__ import annotations

import statistics
import time
import traceback
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from lossrag.bench.problems.base import LossChoice
from lossrag.record import StepRecord

if TYPE_CHECKING:
    from lossrag.bench.problems.base import Problem, Splits
    from lossrag.compose import Composer

__all__ = ["Job", "active_losses", "execute", "measure_cost", "on_device", "wrapped"]


class Job(BaseModel):
    """One unit of work.

    Attributes:
        kind: ``train`` (a method on all tasks), ``stl`` (EW on the single task ``task``),
            ``sweep`` (the same, scored on the validation split: a run of the loss oracle),
            ``cost`` (per-step time of ``method`` against EW, interleaved) or ``toy`` (``toy2d``).
        problem: Registered problem name.
        method: Weighting method name (``ew`` for STL runs), with the suffix ``@oracle`` when it
            trains with ``losses``.
        seed: Seed of data, model and method.
        task: The task of an STL run.
        epochs: Budget override; ``None`` keeps the problem's budget.
        meta_every: Steps between online meta-steps (methods that learn from ``query=``);
            ``None``: ``wrap``'s default.
        steps: Steps of a cost measurement or of a ``toy2d`` run.
        start: The ``toy2d`` start point (0-4) of a ``toy`` job.
        losses: Task -> the loss it trains with instead of its natural one (oracle rows, sweeps).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["train", "stl", "sweep", "cost", "toy"]
    problem: str
    method: str
    seed: int
    task: str | None = None
    epochs: int | None = None
    meta_every: int | None = None
    steps: int | None = None
    start: int | None = None
    losses: dict[str, LossChoice] | None = None

    @property
    def key(self) -> str:
        """File-name-safe identity of the job."""
        parts = [self.kind, self.problem, self.method, f"s{self.seed}"]
        if self.task:
            parts.append(self.task)
        if self.kind == "sweep" and self.losses:
            parts += [c.loss for c in self.losses.values()]
        if self.start is not None:
            parts.append(f"p{self.start}")
        return "__".join(parts)


def execute(job: Job) -> dict[str, Any]:
    """Run ``job`` with one intra-op thread; never raises (a crash is returned as ``error``)."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    result: dict[str, Any] = {"job": job.model_dump(), "key": job.key}
    try:
        result.update(_RUNNERS[job.kind](job))
    except Exception as err:  # reported in the table; the other runs go on
        result["error"] = f"{type(err).__name__}: {err}"
        result["traceback"] = traceback.format_exc(limit=8)
    result["elapsed_s"] = time.perf_counter() - started
    return result


def _problem(job: Job) -> Problem:
    """The job's problem, with the job's losses in place."""
    from lossrag.bench.problems import get_problem

    if not job.losses:
        return get_problem(job.problem)
    return get_problem(job.problem, losses={t: c.model_dump() for t, c in job.losses.items()})


def active_losses(record: StepRecord) -> dict[str, dict[str, float | None]]:
    """Task -> ``{entry id: weight}`` of its active terms at ``record``'s step."""
    out: dict[str, dict[str, float | None]] = {}
    for term in record.terms:
        if term.active:
            out.setdefault(term.task, {})[term.loss] = term.weight
    return out


def _train(job: Job) -> dict[str, Any]:
    from lossrag.bench.fit import fit
    from lossrag.bench.oracle import base_method

    problem = _problem(job)
    weights: list[dict[str, float | None]] = []
    every = 10
    last: list[StepRecord] = []

    def keep(record: StepRecord) -> None:
        if record.step % every == 0:
            weights.append(record.task_weights())
        last[:] = [record]

    r = fit(
        problem,
        base_method(job.method),
        job.seed,
        epochs=job.epochs,
        on_step=keep,
        meta_every=job.meta_every,
    )
    return {
        "metrics": r.metrics,
        "steps": r.steps,
        "skipped": r.skipped,
        "cpu_s": r.cpu_s,
        "wall_s": r.wall_s,
        "weights_every": every,
        "weights": weights,
        "active_losses": active_losses(last[0]) if last else {},
    }


def _stl(job: Job) -> dict[str, Any]:
    """A single-task run, scored on the test split (``stl``) or on validation (``sweep``)."""
    from lossrag.bench.fit import fit

    split = "val" if job.kind == "sweep" else "test"
    r = fit(_problem(job), "ew", job.seed, epochs=job.epochs, only=job.task, split=split)
    return {"metrics": r.metrics, "steps": r.steps, "cpu_s": r.cpu_s, "wall_s": r.wall_s}


def on_device(batches: Iterable[Any], device: str | torch.device) -> Iterator[Any]:
    """``(x, y)`` batches with ``x`` and every target moved to ``device``."""
    for x, y in batches:
        yield x.to(device), {k: v.to(device) for k, v in y.items()}


def wrapped(
    problem: Problem, splits: Splits, policy: str, seed: int, device: str = "cpu", **options: Any
) -> tuple[nn.Module, torch.optim.Optimizer, Composer]:
    """The model (on ``device``), its Adam and the composer of ``policy`` as the benchmark builds
    them. A method that learns from held-out batches gets the validation split as its query
    stream, the scored tasks as query tasks and ``options`` (``meta_every``, ...)."""
    from lossrag.bench.fit import query_batches
    from lossrag.compose import wrap
    from lossrag.weighting import method_class

    model = problem.build_model(seed).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=problem.budget.lr)
    needs_query = method_class(policy).needs_query
    composer = wrap(
        model,
        problem.tasks,
        policy,
        shared=getattr(model, "trunk", None),
        seed=seed,
        query=on_device(query_batches(problem, splits.val, seed), device) if needs_query else None,
        optimizer=opt,
        query_tasks=problem.scored if needs_query else None,
        **(options if needs_query else {}),
    )
    return model, opt, composer


def measure_cost(job: Job, device: str = "cpu", **wrap_options: Any) -> dict[str, Any]:
    """Per-step time of the method over EW, steps alternating EW, method, EW, ... in one process
    (forward + composer.backward + optimizer step, same batches, on ``device``, synchronised
    around each step on a GPU), median and mean of each; ``wrap_options`` go to
    :func:`wrapped`."""
    from lossrag.bench.problems import get_problem

    problem = get_problem(job.problem)
    splits = problem.load(job.seed)
    if job.meta_every is not None:
        wrap_options.setdefault("meta_every", job.meta_every)
    arms = [
        wrapped(problem, splits, m, job.seed, device, **wrap_options) for m in ("ew", job.method)
    ]
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times: list[list[float]] = [[], []]
    order = torch.Generator().manual_seed(job.seed)
    steps, warmup, done = job.steps or 60, 5, 0
    while done < steps + warmup:
        for x, y in on_device(problem.train_batches(splits, order), device):
            for i in (0, 1) if done % 2 == 0 else (1, 0):
                model, opt, composer = arms[i]
                sync()
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                composer.backward(model(x), y)
                opt.step()
                sync()
                if done >= warmup:
                    times[i].append(time.perf_counter() - t0)
            done += 1
            if done >= steps + warmup:
                break
    ew, method = statistics.median(times[0]), statistics.median(times[1])
    # arms alternate which goes first (ABBA), so neither gains from running second
    return {
        "ew_step_ms": ew * 1e3,
        "step_ms": method * 1e3,
        "cost_ratio": method / ew,
        # the median is the step with weights held; the mean includes a policy's periodic refresh
        "cost_ratio_mean": sum(times[1]) / sum(times[0]),
        "steps": steps,
    }


def _toy(job: Job) -> dict[str, Any]:
    from lossrag.bench.toyrun import run_toy

    t0 = time.process_time()
    run = run_toy(
        job.method, job.seed, steps=job.steps, starts=None if job.start is None else [job.start]
    )
    return {
        "pareto_distance": run.pareto_distance.tolist(),
        "final": run.final.tolist(),
        "trajectory": run.trajectory[:, :: max(1, run.trajectory.shape[1] // 200)].tolist(),
        "skipped": run.skipped.tolist(),
        "cpu_s": time.process_time() - t0,
    }


_RUNNERS = {"train": _train, "stl": _stl, "sweep": _stl, "cost": measure_cost, "toy": _toy}
