"""Benchmark reports: ``results.json``, ``table.md`` and PNG plots."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from lossrag._util import atomic_write_bytes, atomic_write_text
from lossrag.bench.metrics import delta_m, mean_rank
from lossrag.bench.oracle import NEIGHBOURS, accepted_losses, base_method, retrieval_accuracy
from lossrag.bench.problems.base import LossChoice
from lossrag.bench.runner import COMPOSING_COST_STEPS

__all__ = [
    "STARVED_MARGIN",
    "code_fingerprints",
    "code_warning",
    "markdown_table",
    "oracle_retrieval",
    "overall",
    "starved_tasks",
    "summarise",
    "worst_tasks",
    "write_reports",
]

Result = dict[str, Any]

#: A task is *starved* by a method when its seed-mean metric is worse, relatively, than the
#: better of EW and FAMO on that task by more than this fraction (BENCHMARKS.md: 3 %).
STARVED_MARGIN = 0.03
#: The methods whose better result on each task is the reference of the starved count.
STARVED_REFERENCE = ("ew", "famo")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: Sequence[Result]) -> dict[str, Any]:
    """Aggregate raw job results: per-run Δm (against the seed-mean single-task metrics), per
    (problem, method) mean ± std, mean rank over every scored metric, and cost ratios."""
    from lossrag.bench.problems import get_problem

    by_kind: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_kind[r["job"]["kind"]].append(r)
    stl: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in by_kind["stl"]:
        if "error" not in r:
            for task, value in r["metrics"].items():
                stl[r["job"]["problem"]][task].append(value)
    stl_mean = {}
    for p, tasks in stl.items():  # in the problem's task order, however the results were read
        names = [t.name for t in get_problem(p).tasks]
        ordered = sorted(tasks, key=lambda t: names.index(t) if t in names else len(names))
        stl_mean[p] = {t: statistics.fmean(tasks[t]) for t in ordered}
    cost = {(r["job"]["problem"], r["job"]["method"]): r.get("cost_ratio") for r in by_kind["cost"]}
    cost_mean = {
        f"{r['job']['problem']}|{r['job']['method']}": r.get("cost_ratio_mean")
        for r in by_kind["cost"]
    }
    runs, cells = [], defaultdict(list)
    per_metric: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    higher: dict[str, bool] = {}
    for r in by_kind["train"]:
        job = r["job"]
        problem, method = job["problem"], job["method"]
        row = {
            "problem": problem,
            "method": method,
            "seed": job["seed"],
            "metrics": r.get("metrics"),
            "delta_m": None,
            "cost_ratio": cost.get((problem, base_method(method)), _ew_cost(method)),
            "cpu_s": r.get("cpu_s"),
            "wall_s": r.get("wall_s"),
            "steps": r.get("steps"),
            "skipped": r.get("skipped"),
            "error": r.get("error"),
            "code": r.get("code"),
        }
        finite = "error" not in r and all(math.isfinite(v) for v in r["metrics"].values())
        if "error" not in r and not finite:
            row["error"] = "diverged: non-finite test metric"
        if finite:
            hib = get_problem(problem).higher_is_better
            base = stl_mean.get(problem, {})
            if set(hib) <= set(base):
                row["delta_m"] = delta_m(r["metrics"], base, hib)
                cells[(problem, method)].append(row["delta_m"])
            for task, value in r["metrics"].items():
                per_metric[problem][method][task].append(value)
                higher[f"{problem}/{task}"] = hib[task]
        runs.append(row)
    ranks = _mean_ranks(per_metric, higher)
    toy = _merge_toy(by_kind["toy"])
    means = {
        p: {m: {t: statistics.fmean(v) for t, v in by.items()} for m, by in methods.items()}
        for p, methods in per_metric.items()
    }
    hib_of = {p: {t: higher[f"{p}/{t}"] for by in means[p].values() for t in by} for p in means}
    fingerprints = code_fingerprints(results)
    return {
        "worst_task": worst_tasks(means, stl_mean, hib_of),
        "starved": starved_tasks(means, hib_of),
        "fingerprints": fingerprints,
        "mixed_code": len(fingerprints) > 1,
        "runs": runs,
        "stl": stl_mean,
        "cells": {f"{p}|{m}": v for (p, m), v in cells.items()},
        "mean_rank": ranks,
        "cost": {f"{p}|{m}": c for (p, m), c in cost.items()},
        "cost_mean": cost_mean,
        "toy": toy,
        "metric_means": {
            m: {
                f"{p}/{t}": statistics.fmean(v)
                for p, by in per_metric.items()
                for t, v in by.get(m, {}).items()
            }
            for m in {m for by in per_metric.values() for m in by}
        },
    }


def _ew_cost(method: str) -> float | None:
    """EW's cost ratio (1) for EW and its oracle row, else unknown."""
    return 1.0 if base_method(method) == "ew" else None


def oracle_retrieval(config: Mapping[str, Any], results: Sequence[Result]) -> dict[str, Any]:
    """Retrieval accuracy (:func:`lossrag.bench.oracle.retrieval_accuracy`) of the retrieval
    policies among the config's methods, on its problems with a loss oracle; ``{}`` when none."""
    from lossrag.bench.problems import get_problem
    from lossrag.weighting import method_class

    oracle = config.get("oracle") or {}
    problems = [p for p in config["problems"] if p in oracle]
    methods = {m for m in config["methods"] if method_class(base_method(m)).composes_terms}
    if not problems or not methods:
        return {}
    accepted = {}
    for p in problems:
        kinds = {t.name: t.kind for t in get_problem(p).tasks}
        accepted[p] = {
            task: accepted_losses(LossChoice.model_validate(choice), kinds[task])
            for task, choice in oracle[p].items()
        }
    runs = [r for r in results if r["job"]["method"] in methods]
    return retrieval_accuracy(runs, accepted)


def _relative_worse(value: float, reference: float, higher_is_better: bool) -> float:
    """How much worse ``value`` is than ``reference``, relative: ``(−1)^δ (value − ref) / |ref|``
    (positive: worse); ``nan`` when the reference is 0."""
    if reference == 0.0:
        return math.nan
    sign = -1.0 if higher_is_better else 1.0
    return sign * (value - reference) / abs(reference)


def worst_tasks(
    means: Mapping[str, Mapping[str, Mapping[str, float]]],
    stl: Mapping[str, Mapping[str, float]],
    higher: Mapping[str, Mapping[str, bool]],
) -> dict[str, dict[str, Any]]:
    """Per ``"problem|method"``: the scored task whose seed-mean metric is relatively the most
    worse than single-task learning, and that change in percent (positive: worse than STL, the
    sign of Δm). Tasks whose STL metric is 0 are left out; a cell without STL is left out.

    Args:
        means: Problem -> method -> task -> seed-mean test metric.
        stl: Problem -> task -> seed-mean STL metric.
        higher: Problem -> task -> whether a larger metric is better.
    """
    out: dict[str, dict[str, Any]] = {}
    for problem, methods in means.items():
        for method, metrics in methods.items():
            changes = {
                t: 100.0 * _relative_worse(v, stl[problem][t], higher[problem][t])
                for t, v in metrics.items()
                if t in stl.get(problem, {})
            }
            changes = {t: c for t, c in changes.items() if math.isfinite(c)}
            if changes:
                task = max(changes, key=lambda t: changes[t])
                out[f"{problem}|{method}"] = {"task": task, "change": changes[task]}
    return out


def starved_tasks(
    means: Mapping[str, Mapping[str, Mapping[str, float]]],
    higher: Mapping[str, Mapping[str, bool]],
    margin: float = STARVED_MARGIN,
) -> dict[str, dict[str, Any]]:
    """Per ``"problem|method"``: the tasks the method starves, i.e. whose seed-mean metric is
    worse than the better of EW and FAMO on that task by more than ``margin``, relative
    (``(−1)^δ (M − M_ref) > margin·|M_ref|``). Problems where neither EW nor FAMO finished are
    left out; where only one did, it is the reference.

    Returns:
        ``{"count": n, "tasks": [...], "reference": {task: reference metric}}`` per cell.
    """
    out: dict[str, dict[str, Any]] = {}
    for problem, methods in means.items():
        refs = [methods[m] for m in STARVED_REFERENCE if m in methods]
        if not refs:
            continue
        best: dict[str, float] = {}
        for task, hib in higher[problem].items():
            values = [r[task] for r in refs if task in r]
            if values:
                best[task] = max(values) if hib else min(values)
        for method, metrics in methods.items():
            tasks = [
                t
                for t, v in metrics.items()
                if t in best
                and (-1.0 if higher[problem][t] else 1.0) * (v - best[t]) > margin * abs(best[t])
            ]
            out[f"{problem}|{method}"] = {"count": len(tasks), "tasks": tasks, "reference": best}
    return out


def code_fingerprints(results: Sequence[Result]) -> dict[str, int]:
    """Code fingerprint (``"code"`` of each job result, see
    :func:`lossrag.bench.runner.code_fingerprint`) -> number of results made by it; results
    that record none count under ``"unrecorded"``. More than one key: the runs of one table come
    from different code."""
    counts: dict[str, int] = defaultdict(int)
    for r in results:
        counts[str(r.get("code") or "unrecorded")] += 1
    return dict(sorted(counts.items()))


def _merge_toy(parts: Sequence[Result]) -> dict[str, Result]:
    """One ``toy2d`` result per method from its per-start-point jobs (ordered by start)."""
    by_method: dict[str, list[Result]] = defaultdict(list)
    for r in parts:
        by_method[r["job"]["method"]].append(r)
    merged: dict[str, Result] = {}
    for method, runs in by_method.items():
        runs.sort(key=lambda r: r["job"].get("start") or 0)
        errors = [r["error"] for r in runs if "error" in r]
        if errors:
            merged[method] = {"error": errors[0]}
            continue
        merged[method] = {
            key: [v for r in runs for v in r[key]]
            for key in ("pareto_distance", "final", "trajectory", "skipped")
        }
    return merged


def _mean_ranks(
    per_metric: Mapping[str, Mapping[str, Mapping[str, list[float]]]],
    higher: Mapping[str, bool],
) -> dict[str, float]:
    """Mean rank per problem (over its scored metrics, methods that finished every seed-mean
    metric), then averaged over the problems each method was ranked on (Nash-MTL and FAMO report
    MR per dataset; averaging per problem keeps QM9's 11 metrics from dominating)."""
    by_method: dict[str, list[float]] = defaultdict(list)
    for problem, methods in per_metric.items():
        tasks = set.intersection(*(set(v) for v in methods.values()))
        table = {m: {t: statistics.fmean(v[t]) for t in tasks} for m, v in methods.items()}
        if len(table) < 2 or not tasks:
            continue
        ranks = mean_rank(table, {t: higher[f"{problem}/{t}"] for t in tasks})
        for method, rank in ranks.items():
            by_method[method].append(rank)
    return {m: statistics.fmean(v) for m, v in by_method.items()}


def _cell(values: Sequence[float] | None) -> str:
    if not values:
        return "–"
    mean, std = _mean_std(values)
    return f"{mean:+.1f} ± {std:.1f}" if len(values) > 1 else f"{mean:+.1f}"  # one seed: no spread


def markdown_table(config: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """Methods × problems: Δm% mean ± std over seeds; then, over the problems, the mean Δm, the
    mean worst-task change against STL, the total of starved tasks, the mean rank, and the
    median cost ratios (median step and mean step)."""
    problems = [p for p in config["problems"] if p != "toy2d"]
    has_toy = "toy2d" in config["problems"]
    crashed = {(r["problem"], r["method"]) for r in summary["runs"] if r["error"]}
    head = [
        "method",
        *problems,
        *(["toy2d dist"] if has_toy else []),
        *_overall_head(summary),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for method in config["methods"]:
        row = [method]
        for p in problems:
            values = summary["cells"].get(f"{p}|{method}") or []
            cell = _cell(values)
            if values and len(values) < len(config["seeds"]):  # the rest crashed or diverged
                cell += f" ({len(values)}/{len(config['seeds'])} seeds)"
            if not summary["stl"].get(p) and any(
                r["problem"] == p and r["method"] == method for r in summary["runs"]
            ):
                cell = "no STL"
            row.append(cell + (" (crash)" if (p, method) in crashed else ""))
        if has_toy:
            toy = summary["toy"].get(method)
            row.append(
                "–"
                if not toy or "error" in toy
                else f"{statistics.fmean(toy['pareto_distance']):.2f}"
            )
        row += _overall_cells(problems, method, summary)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def summary_table(config: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """The over-the-problems columns of :func:`markdown_table` alone, one row per method, best
    mean rank first (methods without a rank last): the table to read when the problems are too
    many for one row."""
    problems = [p for p in config["problems"] if p != "toy2d"]
    ranks = summary["mean_rank"]
    methods = sorted(config["methods"], key=lambda m: (m not in ranks, ranks.get(m, 0.0)))
    head = ["method", *_overall_head(summary)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for method in methods:
        row = [method, *_overall_cells(problems, method, summary)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _overall_head(summary: Mapping[str, Any]) -> list[str]:
    retrieval = ["retrieval acc."] if summary.get("retrieval") else []
    return ["mean Δm", "worst task", "starved", "MR", "cost ×EW", "mean-step cost", *retrieval]


def _overall_cells(problems: Sequence[str], method: str, summary: Mapping[str, Any]) -> list[str]:
    """A method's cells under :func:`_overall_head`."""
    row = _overall(problems, method, summary)
    mr = summary["mean_rank"].get(method)
    row.append("–" if mr is None else f"{mr:.2f}")
    base = base_method(method)
    for key in ("cost", "cost_mean"):
        costs = [c for k, c in summary[key].items() if k.endswith(f"|{base}") and c]
        row.append(
            "1.00" if base == "ew" else (f"{statistics.median(costs):.2f}" if costs else "–")
        )
    retrieval = summary.get("retrieval") or {}
    if retrieval:
        row.append(_retrieval_cell([c for k, c in retrieval.items() if k.endswith(f"|{method}")]))
    return row


def _retrieval_cell(cells: Sequence[Mapping[str, Any]]) -> str:
    """Share and count of (task, seed) pairs whose final loss was the oracle's or near it."""
    hits, pairs = sum(c["hits"] for c in cells), sum(c["pairs"] for c in cells)
    return f"{hits / pairs:.2f} ({hits}/{pairs})" if pairs else "–"


def overall(
    problems: Sequence[str], method: str, summary: Mapping[str, Any]
) -> dict[str, float | int | None]:
    """One method over ``problems``: ``mean_delta_m`` (mean over problems of the seed-mean Δm),
    ``mean_worst`` (mean of the worst-task changes, %), ``starved`` (total of starved tasks) and
    how many problems each covers (``None`` where no problem has the value)."""
    dms = [statistics.fmean(v) for p in problems if (v := summary["cells"].get(f"{p}|{method}"))]
    worst = [w["change"] for p in problems if (w := summary["worst_task"].get(f"{p}|{method}"))]
    starved = [s["count"] for p in problems if (s := summary["starved"].get(f"{p}|{method}"))]
    return {
        "mean_delta_m": statistics.fmean(dms) if dms else None,
        "delta_m_problems": len(dms),
        "mean_worst": statistics.fmean(worst) if worst else None,
        "worst_problems": len(worst),
        "starved": sum(starved) if starved else None,
        "starved_problems": len(starved),
    }


def _overall(problems: Sequence[str], method: str, summary: Mapping[str, Any]) -> list[str]:
    """The mean Δm, mean worst-task and starved cells of ``method``'s row."""
    o = overall(problems, method, summary)
    n = len(problems)

    def partial(k: Any) -> str:
        return "" if k == n else f" ({k}/{n} problems)"

    return [
        "–"
        if o["mean_delta_m"] is None
        else f"{o['mean_delta_m']:+.1f}" + partial(o["delta_m_problems"]),
        "–"
        if o["mean_worst"] is None
        else f"{o['mean_worst']:+.1f} %" + partial(o["worst_problems"]),
        "–" if o["starved"] is None else f"{o['starved']}" + partial(o["starved_problems"]),
    ]


def code_warning(summary: Mapping[str, Any]) -> str | None:
    """The warning line when the runs of one table come from different code fingerprints."""
    prints = summary.get("fingerprints") or {}
    if len(prints) < 2:
        return None
    listed = ", ".join(f"{code} ({n} runs)" for code, n in prints.items())
    return (
        f"**Warning: the runs in this table come from {len(prints)} different code versions** "
        f"({listed}); their numbers may not be comparable. Rerun with --force for one version."
    )


def _detail_tables(config: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """Per problem: each method's test metrics (mean over seeds) beside single-task learning,
    and each method's cost ratio."""
    parts = []
    for p in (p for p in config["problems"] if p != "toy2d"):
        tasks = list(summary["stl"].get(p, {}))
        if not tasks:
            continue
        retrieval = {
            k.split("|")[1]: c
            for k, c in (summary.get("retrieval") or {}).items()
            if k.startswith(f"{p}|")
        }
        extra = " retrieval acc. |" if retrieval else ""
        lines = [
            f"### {p}",
            "",
            "| method | " + " | ".join(tasks) + f" | cost ×EW | worst vs STL | starved |{extra}",
            "|" + " --- |" * (len(tasks) + 4 + bool(retrieval)),
            "| STL | "
            + " | ".join(f"{summary['stl'][p][t]:.4g}" for t in tasks)
            + " | | | |"
            + (" |" if retrieval else ""),
        ]
        for m in config["methods"]:
            values = summary["metric_means"].get(m, {})
            if not any(f"{p}/{t}" in values for t in tasks):
                continue
            cost = summary["cost"].get(f"{p}|{base_method(m)}", _ew_cost(m))
            lines.append(
                f"| {m} | "
                + " | ".join(
                    f"{values[f'{p}/{t}']:.4g}" if f"{p}/{t}" in values else "–" for t in tasks
                )
                + f" | {'–' if cost is None else f'{cost:.2f}'} | "
                + _worst_starved(summary, f"{p}|{m}")
                + " |"
                + (
                    f" {_retrieval_cell([retrieval[m]] if m in retrieval else [])} |"
                    if retrieval
                    else ""
                )
            )
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _worst_starved(summary: Mapping[str, Any], key: str) -> str:
    """The ``worst vs STL | starved`` cells of one problem and method."""
    worst = summary["worst_task"].get(key)
    starved = summary["starved"].get(key)
    w = "–" if worst is None else f"{worst['change']:+.1f} % ({worst['task']})"
    if starved is None:
        return f"{w} | –"
    names = f" ({', '.join(starved['tasks'])})" if starved["tasks"] else ""
    return f"{w} | {starved['count']}{names}"


#: Published or measured expectations the table is checked against (research notes, datasets.md):
#: equal weighting is worse than single-task learning on these problems.
EW_WORSE_THAN_STL = {"mnist1d-mtl": 15.0, "multifashion4": 57.0, "qm9": 12.0}


def sanity_checks(summary: Mapping[str, Any]) -> list[str]:
    """Literature checks on what ran: EW's Δm > 0 where the notes measured it (+15 %, +57 %,
    +12 %); on toy2d EW stalls from (9, 9) and MGDA reaches the Pareto set from every start."""
    lines = []
    for problem, expected in EW_WORSE_THAN_STL.items():
        cell = summary["cells"].get(f"{problem}|ew")
        if not cell:
            lines.append(f"- EW worse than STL on {problem} (notes: +{expected:g} %): not run")
            continue
        mean = statistics.fmean(cell)
        verdict = "holds" if mean > 0 else "FAILS"
        lines.append(
            f"- EW worse than STL on {problem} (notes: +{expected:g} %): "
            f"{verdict}, Δm = {mean:+.1f} %"
        )
    toy = summary["toy"]
    ew, mgda = toy.get("ew"), toy.get("mgda")
    if ew and "error" not in ew:
        d = ew["pareto_distance"][2]
        lines.append(
            f"- toy2d: EW stalls from (9, 9): {'holds' if d > 1 else 'FAILS'}, "
            f"distance to the Pareto set {d:.2f}"
        )
    if mgda and "error" not in mgda:
        worst = max(mgda["pareto_distance"])
        lines.append(
            f"- toy2d: MGDA reaches the Pareto set from every start: "
            f"{'holds' if worst < 0.1 else 'FAILS'}, largest distance {worst:.3f}"
        )
    return lines


def write_reports(
    config: Any, results: Sequence[Result], out: Path, console: Console | None = None
) -> dict[str, Any]:
    """Write ``results.json``, ``table.md`` and the plots into ``out``; print the table."""
    cfg = json.loads(config.model_dump_json())
    summary = summarise(results)
    summary["retrieval"] = oracle_retrieval(cfg, results)
    runs = summary["runs"]
    payload = {
        "config": cfg,
        "runs": runs,
        "stl": summary["stl"],
        "mean_rank": summary["mean_rank"],
        "worst_task": summary["worst_task"],
        "starved": summary["starved"],
        "overall": {
            m: overall([p for p in cfg["problems"] if p != "toy2d"], m, summary)
            for m in cfg["methods"]
        },
        "fingerprints": summary["fingerprints"],
        "mixed_code": summary["mixed_code"],
        "retrieval_accuracy": summary["retrieval"],
        "toy2d": {
            m: {k: r.get(k) for k in ("pareto_distance", "final", "error")}
            for m, r in summary["toy"].items()
        },
    }
    atomic_write_text(out / "results.json", json.dumps(payload, indent=1))
    warning = code_warning(summary)
    text = (
        (f"{warning}\n\n" if warning else "")
        + "Δm% vs single-task learning (lower is better; each run against the single-task "
        "metrics averaged over seeds), "
        + (
            f"mean ± std over seeds {cfg['seeds']}"
            if len(cfg["seeds"]) > 1
            else f"one seed ({cfg['seeds'][0]}), no spread"
        )
        + f"; MR = mean rank over each problem's scored metrics, averaged over "
        f"problems; mean Δm = mean over problems of the seed-mean Δm; worst task = the task "
        f"most worse than STL, relative, on each problem (seed-mean metrics, %, positive is "
        f"worse), averaged over problems; starved = tasks more than "
        f"{100 * STARVED_MARGIN:g} % worse, relative, than the better of EW and FAMO on that "
        f"task (seed means), summed over problems; cost = median per-step "
        f"time ratio to EW (interleaved), median over problems; mean-step cost = the same with "
        f"the mean step, which counts periodic work (refreshes, meta-steps; – where not "
        f"recorded); "
        f"{cfg.get('cost_steps', 60)} steps per arm ({COMPOSING_COST_STEPS} for the retrieval "
        f"policies, whose second retrieval comes at step 200)."
        + (
            f" Retrieval acc. = share of (task, seed) pairs, over the problems with a loss "
            f"oracle, whose active loss at the end of training (the largest-weight active term) "
            f"is the oracle's or one of its {NEIGHBOURS} nearest library neighbours; rows "
            f"`<method>@oracle` train with the oracle's losses."
            if summary["retrieval"]
            else ""
        )
        + "\n\n"
        + markdown_table(cfg, summary)
        + "\nThe same over the problems, best mean rank first:\n\n"
        + summary_table(cfg, summary)
        + "\nSanity against the literature:\n\n"
        + "\n".join(sanity_checks(summary))
        + "\n\n"
        + _detail_tables(cfg, summary)
    )
    atomic_write_text(out / "table.md", text)
    _plots(cfg, results, summary, out)
    errors = [r for r in results if "error" in r]
    if console is not None:
        if warning:
            console.print(f"[yellow]{warning}[/yellow]")
        # whole rows, however narrow the terminal: a copied table stays a table
        console.print(markdown_table(cfg, summary), soft_wrap=True, markup=False, highlight=False)
        for r in errors:
            console.print(f"[red]crashed[/red] {r['key']}: {r['error']}")
        console.print(f"results: {out / 'results.json'}, table: {out / 'table.md'}, plots: {out}")
    return summary


def _plots(
    cfg: Mapping[str, Any], results: Sequence[Result], summary: Mapping[str, Any], out: Path
) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig: Any, name: str) -> None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        atomic_write_bytes(out / name, buffer.getvalue())
        plt.close(fig)

    problems = [p for p in cfg["problems"] if p != "toy2d"]
    if problems:
        fig, axes = plt.subplots(len(problems), 1, figsize=(9, 2.6 * len(problems)), squeeze=False)
        for ax, p in zip(axes[:, 0], problems, strict=True):
            methods = [m for m in cfg["methods"] if summary["cells"].get(f"{p}|{m}")]
            stats = [_mean_std(summary["cells"][f"{p}|{m}"]) for m in methods]
            ax.bar(
                range(len(methods)),
                [s[0] for s in stats],
                yerr=[s[1] for s in stats],
                color=[f"C{i % 10}" for i in range(len(methods))],
                capsize=3,
            )
            ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_ylabel("Δm % (lower is better)")
            ax.set_title(p, fontsize=10)
        fig.tight_layout()
        save(fig, "delta_m.png")
    for p in problems:
        runs = [
            r
            for r in results
            if r["job"]["kind"] == "train"
            and r["job"]["problem"] == p
            and r["job"]["seed"] == cfg["seeds"][0]
            and r.get("weights")
        ]
        runs.sort(key=lambda r: cfg["methods"].index(r["job"]["method"]))
        if not runs:
            continue
        cols = min(4, len(runs))  # no blank panels beside fewer than four methods
        rows = math.ceil(len(runs) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
        for ax, r in zip(axes.flat, runs, strict=False):
            steps = [i * r["weights_every"] for i in range(len(r["weights"]))]
            for task in r["weights"][0]:
                ys = [w.get(task) for w in r["weights"]]
                if all(y is not None for y in ys):
                    ax.plot(steps, ys, linewidth=0.9, label=task)
            ax.set_title(r["job"]["method"], fontsize=9)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(runs) :]:
            ax.axis("off")
        axes[0, 0].legend(fontsize=6)
        fig.suptitle(f"{p}: task weights over steps (seed {cfg['seeds'][0]})")
        fig.tight_layout()
        save(fig, f"weights_{p}.png")
    toy = {m: r for m, r in summary["toy"].items() if "error" not in r}
    if toy:
        from lossrag.bench.problems import Toy2D

        front = Toy2D().pareto
        cols = min(4, len(toy))
        rows = math.ceil(len(toy) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
        for ax, (m, r) in zip(axes.flat, toy.items(), strict=False):
            ax.plot(front[:, 0], front[:, 1], color="black", linewidth=2, label="Pareto set")
            for path in r["trajectory"]:
                px, py = zip(*path, strict=True)
                ax.plot(px, py, linewidth=1)
                ax.plot(px[0], py[0], "ko", markersize=3)
            ax.set(xlim=(-10, 10), ylim=(-10, 10), title=m)
        for ax in list(axes.flat)[len(toy) :]:
            ax.axis("off")
        fig.tight_layout()
        save(fig, "toy2d.png")
