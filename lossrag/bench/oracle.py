"""The loss oracle: per task, the best library loss found by single-task sweeps on validation.

For every scored task of a problem, :func:`run_oracle` trains the task alone (the problem's model,
data and budget, equal weighting) once per library loss that applies to the task's kind, at the
loss card's defaults, and scores it on the **validation** split (corrupted like the training split
on the loss-choice problems; the test split is never read). The candidate with the best seed-mean
validation metric is the oracle's choice (ties go to the natural loss, which is tried first).

The choice feeds two things: *oracle rows* of a benchmark, methods named ``<method>@oracle``
that train with the oracle's losses in place of the natural ones
(:attr:`lossrag.bench.runner.BenchConfig.oracle`), and the *retrieval accuracy* of the retrieval
policies (:func:`retrieval_accuracy`): the share of (task, seed) pairs whose active loss at the end
of training is the oracle's or one of its :data:`NEIGHBOURS` nearest library neighbours (by the
loss index's embedding vectors, same kind).

>>> from lossrag.tasks import Task
>>> [c.id for c in candidates(Task("y", kind="regression"))][:3]
['l2', 'cauchy(scale=1)', 'gaussian_nll(sigma=1)']
>>> base_method("ew@oracle"), base_method("famo")
('ew', 'famo')
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from lossrag._util import atomic_write_text
from lossrag.bench.jobs import Job
from lossrag.bench.problems import LossChoice, get_problem
from lossrag.losses import registry
from lossrag.tasks import NATURAL_LOSS, Task

__all__ = [
    "NEIGHBOURS",
    "ORACLE_SUFFIX",
    "Oracle",
    "OracleTask",
    "accepted_losses",
    "base_method",
    "candidates",
    "choose",
    "leading_loss",
    "load_oracle",
    "plan_sweep",
    "retrieval_accuracy",
    "run_oracle",
]

#: Suffix of a benchmark method trained with the oracle's losses (``ew@oracle``).
ORACLE_SUFFIX = "@oracle"
#: Nearest library neighbours of the oracle's loss that also count as retrieved.
NEIGHBOURS = 3


def base_method(method: str) -> str:
    """The weighting method of a benchmark method name (``ew@oracle`` -> ``ew``)."""
    return method.removesuffix(ORACLE_SUFFIX)


def candidates(task: Task) -> list[LossChoice]:
    """Every library loss for ``task``'s kind at its card's defaults, the natural loss first."""
    natural = NATURAL_LOSS[task.kind]
    names = sorted(registry.list(kind=task.kind), key=lambda n: (n != natural, n))
    return [LossChoice(loss=n, params=registry.spec(n).check_params({})) for n in names]


def plan_sweep(problems: Sequence[str], seeds: Sequence[int], epochs: int | None) -> list[Job]:
    """One ``sweep`` job per problem, scored task, candidate loss and seed."""
    jobs = []
    for name in problems:
        problem = get_problem(name)
        for task in problem.tasks:
            if task.name not in problem.scored:
                continue
            jobs += [
                Job(
                    kind="sweep",
                    problem=name,
                    method="ew",
                    seed=seed,
                    task=task.name,
                    epochs=epochs,
                    losses={task.name: choice},
                )
                for seed in seeds
                for choice in candidates(task)
            ]
    return jobs


class OracleTask(BaseModel):
    """The oracle's sweep of one task.

    Attributes:
        kind: The task's kind.
        metric: Its metric (on the validation split).
        higher_is_better: Whether a larger metric is better.
        natural: Entry id of the task's natural loss.
        chosen: The candidate with the best seed-mean validation metric.
        neighbours: Entry ids of the :data:`NEIGHBOURS` library entries nearest to ``chosen``.
        candidates: Entry id -> seed-mean validation metric (``None``: a seed crashed or
            diverged).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    metric: str
    higher_is_better: bool
    natural: str
    chosen: LossChoice
    neighbours: list[str]
    candidates: dict[str, float | None]


class Oracle(BaseModel):
    """The content of ``oracle.json``.

    Attributes:
        seeds: Seeds of the sweep.
        epochs: Budget override of the sweep (``None``: each problem's budget).
        problems: Problem -> task -> its sweep and choice.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seeds: list[int]
    epochs: int | None = None
    problems: dict[str, dict[str, OracleTask]] = Field(default_factory=dict)

    def choices(self) -> dict[str, dict[str, LossChoice]]:
        """Problem -> task -> the oracle's loss (what :class:`BenchConfig` takes)."""
        return {p: {t: o.chosen for t, o in tasks.items()} for p, tasks in self.problems.items()}


def accepted_losses(choice: LossChoice, kind: str, k: int = NEIGHBOURS) -> list[str]:
    """Entry ids that count as the oracle's loss: ``choice`` and its ``k`` nearest entries of
    ``kind`` in the shipped loss index (cosine of the embedding vectors)."""
    from lossrag.index import Entry, default_index

    index = default_index()
    entry = Entry(choice.loss, registry.spec(choice.loss).check_params(choice.params), kind)
    hits = index.search(index.vector(entry), kind, k + 1)[0]
    return [entry.id, *[h.entry.id for h in hits if h.entry.id != entry.id][:k]]


def choose(
    results: Sequence[Mapping[str, Any]], seeds: Sequence[int], epochs: int | None
) -> Oracle:
    """The oracle from finished ``sweep`` job results: per task, the best seed-mean validation
    metric over the candidates whose every seed finished with a finite metric."""
    values: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    failed: set[tuple[str, str, str]] = set()
    for r in results:
        job = Job.model_validate(r["job"])
        if job.kind != "sweep" or job.task is None or job.losses is None:
            continue
        entry = job.losses[job.task].id
        value = None if "error" in r else r["metrics"].get(job.task)
        if value is None or not math.isfinite(value):
            failed.add((job.problem, job.task, entry))
        else:
            values[(job.problem, job.task)][entry].append(value)
    out: dict[str, dict[str, OracleTask]] = defaultdict(dict)
    for (name, task_name), by_entry in values.items():
        task = next(t for t in get_problem(name).tasks if t.name == task_name)
        means: dict[str, float | None] = {}
        for choice in candidates(task):
            runs = by_entry.get(choice.id, [])
            ok = (name, task_name, choice.id) not in failed and len(runs) == len(seeds)
            means[choice.id] = statistics.fmean(runs) if ok else None
        finite = {e: v for e, v in means.items() if v is not None}
        sign = -1.0 if task.higher_is_better else 1.0
        best = min(finite, key=lambda e: sign * finite[e])  # first on ties: the natural loss
        chosen = next(c for c in candidates(task) if c.id == best)
        out[name][task_name] = OracleTask(
            kind=task.kind,
            metric=str(task.metric),
            higher_is_better=task.higher_is_better,
            natural=candidates(task)[0].id,
            chosen=chosen,
            neighbours=accepted_losses(chosen, task.kind)[1:],
            candidates=means,
        )
    return Oracle(seeds=list(seeds), epochs=epochs, problems=dict(out))


def load_oracle(path: str | Path) -> Oracle:
    """Read an ``oracle.json`` written by :func:`run_oracle`.

    Raises:
        ValueError: The file is not an oracle (with what is wrong).
    """
    try:
        return Oracle.model_validate_json(Path(path).read_text())
    except ValueError as err:
        raise ValueError(
            f"{path} is not a loss oracle written by `lossrag bench oracle`: {err}"
        ) from err


def run_oracle(
    problems: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    *,
    jobs: int = 2,
    epochs: int | None = None,
    force: bool = False,
    console: Console | None = None,
) -> Oracle:
    """Run the single-task sweeps of ``problems`` in ``out/runs`` (finished runs of the same job
    are kept unless ``force``) and write ``out/oracle.json``; return the oracle."""
    from lossrag.bench.runner import code_fingerprint, run_jobs

    console = console or Console()
    for name in problems:
        get_problem(name)  # unknown names fail before anything runs
    (out / "runs").mkdir(parents=True, exist_ok=True)
    todo, results = [], []
    for job in plan_sweep(problems, seeds, epochs):
        path = out / "runs" / f"{job.key}.json"
        done = json.loads(path.read_text()) if path.exists() and not force else None
        if done is not None and "error" not in done and done["job"] == job.model_dump():
            results.append(done)
        else:
            todo.append(job)
    results += run_jobs(todo, out, jobs, console, code_fingerprint())
    oracle = choose(results, seeds, epochs)
    atomic_write_text(out / "oracle.json", oracle.model_dump_json(indent=1))
    return oracle


def leading_loss(active: Mapping[str, float | None]) -> str:
    """The entry id of a task's active loss: its largest-weight active term (the first when the
    method gives no weights)."""
    if not active:
        raise ValueError("leading_loss: the task has no active term.")
    return max(active, key=lambda e: -math.inf if (w := active[e]) is None else w)


def retrieval_accuracy(
    runs: Sequence[Mapping[str, Any]], accepted: Mapping[str, Mapping[str, Sequence[str]]]
) -> dict[str, dict[str, Any]]:
    """Per ``"problem|method"``: the share of (task, seed) pairs whose active loss at the end of
    training (:func:`leading_loss` of the run's ``active_losses``) is in ``accepted[problem][task]``
    (the oracle's loss and its neighbours, :func:`accepted_losses`).

    Only finished ``train`` runs that recorded ``active_losses`` on problems in ``accepted`` count.

    Returns:
        ``{"hits": n, "pairs": m, "share": n / m}`` per cell.
    """
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in runs:
        job = r["job"]
        if job["kind"] != "train" or "error" in r or job["problem"] not in accepted:
            continue
        final = r.get("active_losses")
        if not final:
            continue
        cell = counts[f"{job['problem']}|{job['method']}"]
        for task, ok in accepted[job["problem"]].items():
            if task in final:
                cell[0] += leading_loss(final[task]) in ok
                cell[1] += 1
    return {
        key: {"hits": hits, "pairs": pairs, "share": hits / pairs}
        for key, (hits, pairs) in counts.items()
        if pairs
    }
