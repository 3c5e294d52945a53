"""A method with its settings changed, on suite problems, beside the one-commit run's rows (issue
15: a baseline must be measured in the form its authors use). Every task's test metric, Δm
against single-task learning, the worst task and the starved tasks, seeds side by side::

    python benchmarks/variants.py stch '{"nadir": true}' --label "stch (nadir)" \
        --problems gradnorm-synth-t2,digits-mtl,mnist1d-mtl --seeds 3
    python benchmarks/variants.py dbmtl '{"beta": 0.0}' --problems qm9

The variant is trained here with this checkout's code (its runs kept in
``benchmarks/variants/<method>-<settings>/``, trained again when the code changes); the other rows
(the method at its defaults, ``ew``, ``famo``, ``geometricmean``, ``lossrag-default``) and the
single-task metrics are read from the one-commit run (``benchmarks/full/runs``, commit
``967e0bb``). Columns as the suite's: the worst task's change against single-task learning and
the tasks starved (more than 3 % worse, relative, than the better of EW and FAMO).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

import torch

from lossrag._util import atomic_write_text
from lossrag.bench.fit import fit
from lossrag.bench.metrics import delta_m
from lossrag.bench.problems import Problem, get_problem
from lossrag.bench.report import starved_tasks, worst_tasks
from lossrag.bench.runner import code_fingerprint
from lossrag.weighting import make_method

RUNS = Path(__file__).parent / "full" / "runs"
OWN = Path(__file__).parent / "variants"
STORED = ("ew", "famo", "geometricmean", "lossrag-default")


def _stored(kind: str, problem: str, method: str, seed: int, task: str | None = None) -> dict:
    name = f"{kind}__{problem}__{method}__s{seed}" + (f"__{task}" if task else "")
    return json.loads((RUNS / f"{name}.json").read_text())["metrics"]


def _variant_run(method: str, settings: dict, problem: Problem, seed: int) -> dict[str, float]:
    """The variant's test metrics on ``problem`` at ``seed``: kept with the code that trained
    them, trained again when the code changed."""
    name = f"{method}-{json.dumps(settings, sort_keys=True, separators=(',', '='))}"
    path = OWN / re.sub(r"[^\w.=,-]", "", name) / f"{problem.name}__s{seed}.json"
    code = code_fingerprint()
    if path.exists() and json.loads(path.read_text())["code"] == code:
        return json.loads(path.read_text())["metrics"]
    metrics = fit(problem, make_method(method, **settings), seed).metrics
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"metrics": metrics, "code": code}))
    return metrics


def _spread(values: list[float], form: str = "+.1f") -> str:
    """Mean ± standard deviation over seeds (as the suite's table)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{form}} ± {std:.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method")
    parser.add_argument("settings", help="JSON: the arguments that differ from its defaults")
    parser.add_argument("--label", help="the variant's row name (default: method + settings)")
    parser.add_argument("--problems", default="gradnorm-synth-t2,digits-mtl,mnist1d-mtl")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = json.loads(args.settings)
    label = args.label or f"{args.method} {args.settings}"
    totals: dict[str, list[tuple[float, int]]] = {}  # per row: (Δm, starved) on each problem
    problems = args.problems.split(",")
    for name in problems:
        problem = get_problem(name)
        seeds = range(args.seeds)
        stl = {
            task: statistics.mean(_stored("stl", name, "ew", s, task)[task] for s in seeds)
            for task in problem.scored
        }
        rows: dict[str, list[dict[str, float]]] = {
            m: [_stored("train", name, m, s) for s in seeds] for m in (args.method, *STORED)
        }
        rows[label] = [_variant_run(args.method, settings, problem, s) for s in seeds]
        means = {
            m: {t: statistics.fmean(r[t] for r in runs) for t in problem.scored}
            for m, runs in rows.items()
        }
        higher = {name: problem.higher_is_better}
        worst = worst_tasks({name: means}, {name: stl}, higher)
        starved = starved_tasks({name: means}, higher)
        print(f"\n{name} ({args.seeds} seeds; Δm % against single-task learning, lower is better)")
        print(f"| method | Δm | worst task | starved | {' | '.join(problem.scored)} |")
        print("| --- " * (len(problem.scored) + 4) + "|")
        print(f"| single-task | | | | {' | '.join(f'{stl[t]:.4g}' for t in problem.scored)} |")
        for method, runs in rows.items():
            deltas = [delta_m(r, stl, problem.higher_is_better) for r in runs]
            cells = [_spread([r[t] for r in runs], ".4g") for t in problem.scored]
            w, hungry = worst[f"{name}|{method}"], starved[f"{name}|{method}"]["tasks"]
            named = f" ({', '.join(hungry)})" if hungry else ""
            totals.setdefault(method, []).append((statistics.fmean(deltas), len(hungry)))
            print(
                f"| {method} | {_spread(deltas)} | {w['change']:+.1f} % ({w['task']}) | "
                f"{len(hungry)}{named} | {' | '.join(cells)} |"
            )

    print(f"\nOver the {len(problems)} problems (mean of the per-problem Δm)")
    print("| method | mean Δm | starved tasks |\n| --- | --- | --- |")
    for method, found in totals.items():
        mean, total = statistics.fmean(d for d, _ in found), sum(n for _, n in found)
        print(f"| {method} | {mean:+.1f} | {total} |")


if __name__ == "__main__":
    main()
