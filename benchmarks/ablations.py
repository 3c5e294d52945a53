"""Ablations of the shipped policy on the protocol suite (issue: zero-shot default policy).

    python benchmarks/ablations.py --out benchmarks/ablations [--jobs 2]
    python benchmarks/ablations.py --out benchmarks/ablations --report   # the table only

Variants of ``policies/default``, each trained with ``lossrag.bench.fit`` exactly as ``lossrag
bench`` trains a method (same budget, seeds 0-2), scored as Δm % against the single-task runs in
``benchmarks/protocol``:

- ``default``: the shipped policy itself (for a side-by-side run);
- ``no-retrieval``: ``max_terms=1``, so every task trains with its natural loss only;
- ``no-gates``: gates never switch a term (patience 10⁹, on and off);
- ``uniform-weights``: temperature 10⁶, so every active term gets the same weight: what is left is
  the scale normalisation ``L / sg(EMA L)`` of the training loss;
- ``online-correction``: the prior with the correction Δφ that the online phase of ``lossrag
  train`` learned (``online_correction.npz`` in the policy folder, kept there when the held-out
  check did not ship it), frozen; the default itself is the prior alone (Δφ = 0);
- ``hand-set prior`` is ``lossrag`` in ``benchmarks/suite`` (the same policy before training).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

PROBLEMS = [
    "digits-mtl",
    "gradnorm-synth-t2",
    "mnist1d-mtl",
    "mnist1d-noisy",
    "gradnorm-synth-t10",
    "qm9",
    "qm9-raw",
    "multifashion",
    "multifashion4",
    "gradnorm-synth-t40",
]
VARIANTS: dict[str, dict[str, object]] = {
    "default": {},
    "no-retrieval": {"max_terms": 1},
    "no-gates": {"patience": 10**9, "patience_on": 10**9},
    "uniform-weights": {"temperature": 1e6},
    "online-correction": {},
}


def _run(job: tuple[str, str, int]) -> dict[str, object]:
    import torch

    from lossrag.bench.fit import fit
    from lossrag.bench.problems import get_problem
    from lossrag.bench.runner import code_fingerprint
    from lossrag.policy import load_policy
    from lossrag.policy.store import policy_folder, read_correction
    from lossrag.train.es import ONLINE_CORRECTION

    torch.set_num_threads(1)
    variant, problem, seed = job
    policy = load_policy("default", **VARIANTS[variant])
    if variant == "online-correction":
        read_correction(policy_folder("default") / ONLINE_CORRECTION, policy.correction)
    r = fit(get_problem(problem), policy, seed)
    return {
        "variant": variant,
        "problem": problem,
        "seed": seed,
        "code": code_fingerprint(),
        "metrics": r.metrics,
    }


def delta_ms(
    runs: list[dict[str, Any]], stl: dict[str, dict[str, float]]
) -> dict[str, dict[str, list[float]]]:
    """Variant -> problem -> Δm % of each seed's run, against the single-task means ``stl``."""
    from lossrag.bench.metrics import delta_m
    from lossrag.bench.problems import get_problem

    out: dict[str, dict[str, list[float]]] = {}
    missing = sorted({r["problem"] for r in runs} - set(stl))
    if missing:
        raise SystemExit(f"ablations: no single-task runs of {', '.join(missing)} in --stl")
    for r in runs:
        higher = get_problem(r["problem"]).higher_is_better
        value = delta_m(r["metrics"], stl[r["problem"]], higher)
        out.setdefault(r["variant"], {}).setdefault(r["problem"], []).append(value)
    return out


def run_missing(
    runs: list[dict[str, Any]], variants: list[str], problems: list[str], saved: Path, jobs: int
) -> list[dict[str, Any]]:
    """``runs`` with every (variant, problem, seed 0-2) run by this code: a run already in
    ``runs`` is kept when this code made it, the others of ``variants`` are redone, and
    ``saved`` is rewritten as each job finishes (an interrupted call continues where it
    stopped)."""
    from lossrag._util import atomic_write_text
    from lossrag.bench.runner import code_fingerprint

    code = code_fingerprint()
    done = {(r["variant"], r["problem"], r["seed"]) for r in runs if r.get("code") == code}
    runs = [r for r in runs if r["variant"] not in variants or r.get("code") == code]
    todo = [
        (v, p, s) for v in variants for p in problems for s in range(3) if (v, p, s) not in done
    ]
    saved.parent.mkdir(parents=True, exist_ok=True)
    failed = []
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_run, job): job for job in todo}
        for n, future in enumerate(as_completed(futures), 1):
            variant, problem, seed = futures[future]
            try:
                runs.append(future.result())
            except Exception as err:  # the others go on; this one is run again next time
                failed.append(f"{variant} {problem} s{seed}: {err!r}")
                continue
            atomic_write_text(saved, json.dumps(runs, indent=1))
            print(f"ablations {n}/{len(todo)} {variant} {problem} s{seed}")
    if failed:
        raise SystemExit("ablations: failed (run again to retry them): " + "; ".join(failed))
    return runs


def main() -> None:
    from lossrag._util import atomic_write_text
    from lossrag.bench.runner import one_thread_per_worker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/ablations"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--stl", type=Path, default=Path("benchmarks/protocol/runs"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--report", action="store_true", help="only rebuild the table")
    args = parser.parse_args()
    variants, problems = args.variants.split(","), args.problems.split(",")
    one_thread_per_worker()
    saved = args.out / "runs.json"
    runs = json.loads(saved.read_text()) if saved.exists() else []
    if not args.report:
        runs = run_missing(runs, variants, problems, saved, args.jobs)
    stl: dict[str, dict[str, list[float]]] = {}
    for path in args.stl.glob("stl__*.json"):
        run = json.loads(path.read_text())
        for task, value in run["metrics"].items():
            stl.setdefault(run["job"]["problem"], {}).setdefault(task, []).append(value)
    runs = [r for r in runs if r["problem"] in problems and r["variant"] in variants]
    table = delta_ms(
        runs, {p: {t: statistics.fmean(v) for t, v in m.items()} for p, m in stl.items()}
    )
    lines = [
        "| variant | " + " | ".join(problems) + " | mean |",
        "|---" * (len(problems) + 2) + "|",
    ]
    for variant in sorted(table, key=list(VARIANTS).index):
        cells, means = [], []
        for problem in problems:
            values = table[variant].get(problem, [])
            if len(values) < 3:  # unfinished
                cells.append(f"{len(values)} of 3 seeds")
                continue
            means.append(statistics.fmean(values))
            cells.append(f"{means[-1]:+.1f} ± {statistics.stdev(values):.1f}")
        mean = f"{statistics.fmean(means):+.2f}" if len(means) == len(problems) else "–"
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {mean} |")
    codes = sorted({str(r.get("code", "not recorded")) for r in runs})
    lines.append(
        f"\nCode fingerprint{'s' if len(codes) > 1 else ''} of the runs: {', '.join(codes)}."
    )
    atomic_write_text(args.out / "table.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
