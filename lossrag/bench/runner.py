"""``lossrag bench``: plan the jobs, run them in parallel processes, resume, and report."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

import lossrag
from lossrag._util import atomic_write_text, data_dir, unknown_name_error
from lossrag.bench.data.cache import cache_dir
from lossrag.bench.jobs import Job, execute
from lossrag.bench.oracle import ORACLE_SUFFIX, base_method
from lossrag.bench.problems.base import LossChoice
from lossrag.weighting import available, method_class

__all__ = ["QUICK_METHODS", "BenchConfig", "plan", "report_finished", "run_bench", "run_jobs"]

#: Every registered method (the baselines and ``lossrag``), as ``lossrag bench quick`` runs them.
QUICK_METHODS = tuple(available())
#: Methods whose step costs one backward per task (MetaWeighting: one per task's query loss); the
#: protocol runs them at T ≤ 10 only.
PER_TASK_METHODS = frozenset(
    m for m in QUICK_METHODS if method_class(m).per_task_gradients or m == "metaweighting"
)
_TOO_MANY_TASKS = frozenset({"gradnorm-synth-t40"})
#: Cost window of the retrieval policies: their periodic work (a refresh every 50 steps, the
#: second retrieval at step 200) must fall inside it for the mean step to count it.
COMPOSING_COST_STEPS = 400
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class BenchConfig(BaseModel):
    """What a benchmark runs; saved as ``config.json`` in the output folder.

    Attributes:
        problems: Problem names (``toy2d`` included).
        methods: Weighting method names.
        seeds: Seeds, shared by every method.
        epochs: Budget override for every problem; ``None`` keeps each budget.
        meta_every: Steps between the online meta-steps of the methods that learn from
            ``query=`` (training and cost runs); ``None``: ``wrap``'s default (5).
        cost_steps: Steps per arm of the interleaved cost measurement (at least
            :data:`COMPOSING_COST_STEPS` for the retrieval policies).
        toy_steps: Adam steps of a ``toy2d`` run, the same for every method (Nash-MTL and FAMO:
            50k). Each start point is its own job; Nash-MTL and CAGrad solve a convex program at
            every step (about 15 ms and 4 ms here), so their 5 × 50k steps take about an hour and
            a quarter of an hour of CPU. At 20k steps MGDA has not yet reached the Pareto set
            from (−8.5, 7.5) (distance 5.3; 0.0 at 50k).
        version: LossRAG version that ran it.
        oracle: Problem -> task -> the loss oracle's choice (``lossrag bench oracle``): methods
            named ``<method>@oracle`` train with these losses, on the problems listed here only;
            the report gives the retrieval accuracy of the retrieval policies on them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    problems: list[str] = Field(min_length=1)
    methods: list[str] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    epochs: int | None = None
    meta_every: int | None = Field(default=None, ge=1)
    cost_steps: int = 60
    toy_steps: int = 50000
    version: str = lossrag.__version__
    oracle: dict[str, dict[str, LossChoice]] = Field(default_factory=dict)

    def validate_names(self) -> None:
        """Unknown problems or methods are an error with the closest names."""
        from lossrag.bench.problems import list_problems

        for p in self.problems:
            if p != "toy2d" and p not in list_problems():
                raise unknown_name_error("problem", p, [*list_problems(), "toy2d"])
        for m in self.methods:
            try:
                method_class(base_method(m))
            except ValueError:
                raise unknown_name_error("method", m, available()) from None
            if m.endswith(ORACLE_SUFFIX) and not set(self.oracle) & set(self.problems):
                raise ValueError(
                    f"bench: method {m!r} trains with the loss oracle's losses but no problem has "
                    "an oracle; pass --oracle with an oracle.json of `lossrag bench oracle`."
                )


def toy_skipped(config: BenchConfig) -> dict[str, str]:
    """The methods of ``config`` that ``toy2d`` does not run, with the reason (none without it)."""
    from lossrag.bench.toyrun import TOY_UNSUPPORTED

    if "toy2d" not in config.problems:
        return {}
    skipped = {m: TOY_UNSUPPORTED[m] for m in config.methods if m in TOY_UNSUPPORTED}
    skipped.update(
        (m, "the toy has no loss oracle") for m in config.methods if m.endswith(ORACLE_SUFFIX)
    )
    return skipped


def plan(config: BenchConfig) -> list[Job]:
    """Every job of the benchmark: methods × problems × seeds, single-task runs, cost runs."""
    from lossrag.bench.problems import Toy2D, get_problem

    jobs: list[Job] = []
    for name in config.problems:
        if name == "toy2d":
            skipped = toy_skipped(config)
            jobs += [
                Job(kind="toy", problem=name, method=m, seed=0, steps=config.toy_steps, start=s)
                for m in config.methods
                if m not in skipped
                for s in range(len(Toy2D().starts))
            ]
            continue
        methods = [
            m
            for m in config.methods
            if not (name in _TOO_MANY_TASKS and base_method(m) in PER_TASK_METHODS)
            and (name in config.oracle or not m.endswith(ORACLE_SUFFIX))
        ]
        for seed in config.seeds:
            jobs += [
                Job(
                    kind="train",
                    problem=name,
                    method=m,
                    seed=seed,
                    epochs=config.epochs,
                    meta_every=config.meta_every,
                    losses=config.oracle[name] if m.endswith(ORACLE_SUFFIX) else None,
                )
                for m in methods
            ]
            jobs += [
                Job(kind="stl", problem=name, method="ew", seed=seed, task=t, epochs=config.epochs)
                for t in get_problem(name).scored
            ]
        jobs += [
            Job(
                kind="cost",
                problem=name,
                method=m,
                seed=0,
                steps=_cost_steps(config, m),
                meta_every=config.meta_every,
            )
            for m in methods
            if m != "ew" and not m.endswith(ORACLE_SUFFIX)  # as costly as the method itself
        ]
    return jobs


def _cost_steps(config: BenchConfig, method: str) -> int:
    if method_class(method).composes_terms:
        return max(config.cost_steps, COMPOSING_COST_STEPS)
    return config.cost_steps


def one_thread_per_worker() -> None:
    """One thread per spawned worker for numpy's BLAS and OpenMP too, not only torch: workers read
    these when they import numpy, and oversubscribed BLAS threads made gradnorm-synth's data
    generation ten times slower under a parallel benchmark."""
    for name in _THREAD_ENV:
        os.environ.setdefault(name, "1")


def progress_columns() -> tuple[ProgressColumn, ...]:
    """Columns of a progress bar over parallel runs: the bar's name (its task's description),
    done/total, time left, the last result."""
    return (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[last]}"),
    )


def advance(progress: Progress, bar: TaskID, last: str) -> None:
    """One step of ``bar`` with ``last`` as its last result; with no terminal (output to a file
    or a pipe, where rich draws the bar only at the end) also as a plain line, so that a log
    shows how far the work is."""
    progress.update(bar, advance=1, last=last)
    if not progress.console.is_terminal:
        task = next(t for t in progress.tasks if t.id == bar)
        done = f"{int(task.completed)}/{int(task.total or 0)}"
        progress.console.print(f"{task.description} {done} {last}", highlight=False)


def code_fingerprint() -> str:
    """Hash of LossRAG's source and loss cards, torch's version and the package version."""
    import torch

    digest = hashlib.sha256(f"{lossrag.__version__}|{torch.__version__}".encode())
    root = Path(lossrag.__file__).parent
    for path in sorted([*root.rglob("*.py"), *data_dir("library").glob("*.toml")]):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _stl_cache(job: Job, fingerprint: str) -> Path:
    """STL results are shared across benchmarks, keyed by the job (problem, seed, task, budget
    override), the problem's whole configuration and the code fingerprint."""
    from lossrag.bench.problems import get_problem

    problem = get_problem(job.problem).model_dump_json()
    digest = hashlib.sha256(f"{job.key}|{job.epochs}|{problem}|{fingerprint}".encode())
    return cache_dir() / "stl" / f"{job.key}-{digest.hexdigest()[:16]}.json"


def _prepare(out: Path, config: BenchConfig, resume: bool, force: bool) -> None:
    saved = out / "config.json"
    if saved.exists():
        previous = json.loads(saved.read_text())
        same = previous == json.loads(config.model_dump_json())
        if force:
            shutil.rmtree(out / "runs", ignore_errors=True)
        elif not resume:
            raise ValueError(
                f"bench: {out} already holds results "
                f"({'of this configuration' if same else 'of another configuration'}); "
                "continue it with `lossrag bench resume` or start over with --force."
            )
        elif not same:
            raise ValueError(
                f"bench: {out} holds results of another configuration ({previous}); "
                "resume=True continues only the same configuration, --force starts over."
            )
    (out / "runs").mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, config.model_dump_json(indent=2))


def run_bench(
    config: BenchConfig,
    out: Path,
    *,
    jobs: int = 2,
    resume: bool = False,
    force: bool = False,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Run (or finish) the benchmark in ``out`` and write its reports; return every result.

    Finished jobs are files in ``out/runs`` (written atomically), so an interrupted benchmark
    resumes where it stopped; single-task runs are also cached across benchmarks.
    """
    console = console or Console()
    config.validate_names()
    for method, why in toy_skipped(config).items():
        console.print(f"[yellow]note:[/yellow] toy2d does not run {method}: {why}.")
    _prepare(out, config, resume, force)
    fingerprint = code_fingerprint()
    todo, results = [], []
    for job in plan(config):
        path = out / "runs" / f"{job.key}.json"
        cached = _stl_cache(job, fingerprint) if job.kind == "stl" and not force else None
        done = json.loads(path.read_text()) if path.exists() else None
        if done is not None and "error" not in done:  # crashed jobs are retried
            results.append(done)
        elif cached is not None and cached.exists():
            atomic_write_text(path, cached.read_text())
            results.append(json.loads(cached.read_text()))
        else:
            todo.append(job)
    other = sum(1 for r in results if r.get("code") != fingerprint)
    if other:
        console.print(
            f"[yellow]note:[/yellow] {other} of the {len(results)} finished runs in {out} were "
            f"made by other code than this ({fingerprint}) or record none; the report mixes them."
        )
    # plan order: problem by problem, seed by seed, so that an interrupted run leaves whole
    # cells behind
    results += run_jobs(todo, out, jobs, console, fingerprint)
    from lossrag.bench.report import write_reports

    write_reports(config, results, out, console)
    return results


def run_jobs(
    todo: Sequence[Job], out: Path, workers: int, console: Console, fingerprint: str
) -> list[dict[str, Any]]:
    """Run ``todo`` in ``workers`` spawned processes with a progress bar; each result is written
    to ``out/runs/<key>.json`` as it finishes (single-task runs also to the shared cache) and
    returned, tagged with the code ``fingerprint``."""
    done: list[dict[str, Any]] = []
    if not todo:
        return done
    one_thread_per_worker()
    columns = progress_columns()
    with (
        Progress(*columns, console=console) as progress,
        ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool,
    ):
        bar = progress.add_task("bench", total=len(todo), last="")
        pending: dict[Future[dict[str, Any]], Job] = {pool.submit(execute, j): j for j in todo}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                job = pending.pop(future)
                result = {**future.result(), "code": fingerprint}
                text = json.dumps(result)
                atomic_write_text(out / "runs" / f"{job.key}.json", text)
                if job.kind == "stl" and "error" not in result:
                    atomic_write_text(_stl_cache(job, fingerprint), text)
                done.append(result)
                status = "[red]crashed[/red]" if "error" in result else "ok"
                advance(progress, bar, f"{job.key} {status}")
    return done


def report_finished(out: Path, console: Console | None = None) -> list[str]:
    """Write the reports of ``out`` from the runs finished so far, over the problems whose every
    training and single-task run has finished; return those problems. Runs nothing."""
    saved = out / "config.json"
    if not saved.exists():
        raise ValueError(f"bench: {out} holds no benchmark (no config.json).")
    config = BenchConfig.model_validate_json(saved.read_text())
    runs = {}
    for path in (out / "runs").glob("*.json"):
        result = json.loads(path.read_text())
        runs[result["key"]] = result
    jobs = plan(config)
    complete = [
        p
        for p in config.problems
        if all(j.key in runs for j in jobs if j.problem == p and j.kind in ("train", "stl", "toy"))
    ]
    if not complete:
        raise ValueError(f"bench: no problem of {out} has finished all its runs yet.")
    from lossrag.bench.report import write_reports

    partial = config.model_copy(update={"problems": complete})
    write_reports(
        partial, [r for r in runs.values() if r["job"]["problem"] in complete], out, console
    )
    return complete
