"""What a whole training run costs against EW's, from the process times a suite's training jobs
recorded (one thread each; evaluation and set-up included, the same for every method).

    python benchmarks/run_cost.py benchmarks/full --methods lossrag-default famo gls

The interleaved cost jobs (``lossrag bench``) time 60 or 400 steps side by side; this sums each
method's training jobs over seeds per problem, divided by EW's on the same problem and seeds. The
jobs ran one per worker beside others, so a ratio is noisier than an interleaved one.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def run_seconds(out: Path) -> dict[tuple[str, str], dict[int, float]]:
    """``{(problem, method): {seed: cpu_s}}`` of the training jobs stored in ``out/runs``."""
    seconds: dict[tuple[str, str], dict[int, float]] = {}
    for path in sorted((out / "runs").glob("train__*.json")):
        run = json.loads(path.read_text())
        job = run["job"]
        if "error" not in run and run.get("cpu_s"):
            seconds.setdefault((job["problem"], job["method"]), {})[job["seed"]] = run["cpu_s"]
    return seconds


def main() -> None:
    """Print one line per method: its ratio on each problem, their median and range."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="a `lossrag bench` output folder")
    parser.add_argument("--methods", nargs="+", required=True)
    args = parser.parse_args()
    seconds = run_seconds(args.out)
    problems = sorted({p for p, m in seconds if m == "ew"})
    for method in args.methods:
        ratios = {}
        for p in problems:
            ours, ew = seconds.get((p, method), {}), seconds[(p, "ew")]
            seeds = sorted(ours.keys() & ew.keys())
            if seeds:
                ratios[p] = sum(ours[s] for s in seeds) / sum(ew[s] for s in seeds)
        if not ratios:
            print(f"{method}: no training jobs")
            continue
        values = list(ratios.values())
        per = ", ".join(f"{p} {r:.2f}" for p, r in ratios.items())
        print(
            f"{method}: median {statistics.median(values):.2f}× EW over {len(values)} problems "
            f"({min(values):.2f}–{max(values):.2f}); {per}"
        )


if __name__ == "__main__":
    main()
