"""Do the stored benchmark runs still come out of the current code? (issue 15: one code version)

The README's tables were run at several commits. For every (table, method, code fingerprint) of
the stored training and single-task runs, this re-runs the cheapest stored job with the current
code (for LossRAG's own methods, whose code path depends on the problem, the cheapest of every
problem) and compares its test metrics with the stored ones, bit for bit. A row that reproduces
shows that the method's stored numbers are the ones the current code gives (for that job; the
other jobs of the same fingerprint ran the same code). Runs stored without a fingerprint are
checked too.
Written: a markdown table, one row per check::

    python benchmarks/reproduce.py --tables suite12,losschoice,suite,protocol,online \\
        --workers 2 --out benchmarks/reproduce.md
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import subprocess
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from lossrag.bench.jobs import Job, execute
from lossrag.bench.runner import code_fingerprint, one_thread_per_worker

ROOT = Path(__file__).parent


def cheapest(table: str, each_problem: set[str]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Per ``(method, fingerprint, problem)`` of ``benchmarks/<table>/runs`` (``stl`` for the
    single-task runs), the stored run with the shortest training time; ``problem`` is ``""``
    (one job over all problems) except for ``each_problem``'s methods."""
    picked: dict[tuple[str, str, str], dict[str, Any]] = {}
    for path in sorted((ROOT / table / "runs").glob("*.json")):
        run = json.loads(path.read_text())
        job = run.get("job", {})
        if job.get("kind") not in ("train", "stl") or "error" in run:
            continue
        method = "stl" if job["kind"] == "stl" else job["method"]
        problem = job["problem"] if method in each_problem else ""
        key = (method, run.get("code") or "none", problem)
        best = picked.get(key)
        if best is None or run.get("wall_s", math.inf) < best.get("wall_s", math.inf):
            picked[key] = run
    return picked


def largest_difference(stored: Mapping[str, float], now: Mapping[str, float]) -> float:
    """The largest relative difference between two runs' metrics (``inf`` if they differ in
    their tasks; a metric that is NaN in both counts as equal)."""
    if stored.keys() != now.keys():
        return math.inf
    gaps = [
        0.0
        if now[k] == v or (math.isnan(v) and math.isnan(now[k]))
        else abs(now[k] - v) / max(abs(v), 1e-12)
        for k, v in stored.items()
    ]
    return max(gaps, default=0.0)


def main() -> None:
    """Parse the arguments, re-run one job per (table, method, fingerprint), write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tables", default="suite12,losschoice,suite,protocol,online")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "reproduce.md")
    parser.add_argument(
        "--each-problem",
        default="lossrag-default,lossrag-default@oracle,lossrag-default-online",
        help="methods checked on every problem (their code path depends on it: the target "
        "normaliser, the gates, the corruption evidence); the others on their cheapest job",
    )
    args = parser.parse_args()
    each = set(args.each_problem.split(","))
    checks = [
        (table, method, code, run)
        for table in args.tables.split(",")
        for (method, code, _), run in sorted(cheapest(table, each).items())
    ]
    one_thread_per_worker()
    specs = {json.dumps(run["job"], sort_keys=True) for *_, run in checks}  # tables share runs
    jobs = [Job.model_validate_json(spec) for spec in specs]
    with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
        ran = dict(zip(specs, pool.map(execute, jobs), strict=True))
    results = [ran[json.dumps(run["job"], sort_keys=True)] for *_, run in checks]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    lines = [
        f"Stored runs re-run at commit `{commit}` (code fingerprint `{code_fingerprint()}`), "
        "one job per table, method and stored fingerprint; metrics compared bit for bit.",
        "",
        "| table | method | stored fingerprint | job | reproduced | largest relative difference |",
        "|---|---|---|---|---|---|",
    ]
    same = 0
    for (table, method, code, run), now in zip(checks, results, strict=True):
        if "error" in now:
            verdict, diff = "crashed", now["error"].splitlines()[0]
        else:
            gap = largest_difference(run["metrics"], now["metrics"])
            verdict, diff = ("yes" if gap == 0 else "no"), f"{gap:.2e}"
            same += gap == 0
        lines.append(f"| {table} | {method} | {code} | {run['key']} | {verdict} | {diff} |")
        print(lines[-1], flush=True)
    lines += ["", f"{same} of {len(checks)} reproduced bit for bit."]
    args.out.write_text("\n".join(lines) + "\n")
    print(lines[-1])


if __name__ == "__main__":
    main()
