"""Write the shipped policy's benchmark results into its card (``policies/default/card.json``).

    python benchmarks/card_benchmarks.py [--suite DIR] [--ablations DIR]

From the suite's ``results.json`` (Δm % per problem, mean over seeds; mean rank among every method
of the suite), its cost runs (median over problems of the median- and mean-step ratios to EW) and
the ablations' ``runs.json`` (mean Δm per variant).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ablations import delta_ms  # benchmarks/ablations.py, beside this script

from lossrag.policy.store import policy_folder, record_benchmarks

METHODS = ("lossrag-default", "lossrag-default-online")


def _delta_m(runs: list[dict], method: str, problems: list[str]) -> dict[str, float]:
    per: dict[str, list[float]] = {}
    for r in runs:
        if r["method"] == method and r.get("delta_m") is not None:
            per.setdefault(r["problem"], []).append(r["delta_m"])
    return {p: round(statistics.fmean(per[p]), 2) for p in problems if p in per}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=Path("benchmarks/suite"))
    parser.add_argument("--ablations", type=Path, default=Path("benchmarks/ablations"))
    args = parser.parse_args()
    results = json.loads((args.suite / "results.json").read_text())
    methods = results["config"]["methods"]
    record: dict[str, object] = {
        "source": f"{args.suite} (3 seeds, Δm % vs single-task learning, lower is better)"
    }
    for method in METHODS:
        cells = _delta_m(results["runs"], method, results["config"]["problems"])
        record[method] = {
            "delta_m": cells,
            "mean_delta_m": round(statistics.fmean(cells.values()), 2),
            f"mean_rank_of_{len(methods)}": round(results["mean_rank"][method], 2),
        }
    costs = [json.loads(p.read_text()) for p in (args.suite / "runs").glob("cost__*__*.json")]
    frozen = [c for c in costs if c["job"]["method"] == METHODS[0]]
    record["cost_x_ew"] = {
        "median_step": round(statistics.median(c["cost_ratio"] for c in frozen), 3),
        "mean_step": round(statistics.median(c["cost_ratio_mean"] for c in frozen), 3),
        "steps": frozen[0]["steps"],
    }
    ablations = json.loads((args.ablations / "runs.json").read_text())
    # results["stl"]: per problem, each task's single-task metric averaged over seeds
    by_variant = delta_ms(ablations, results["stl"])
    record["ablations_mean_delta_m"] = {
        v: round(statistics.fmean(statistics.fmean(x) for x in per.values()), 2)
        for v, per in by_variant.items()
    }
    record_benchmarks(policy_folder("default"), record)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
