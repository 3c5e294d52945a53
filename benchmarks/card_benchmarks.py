"""Write the shipped policy's benchmark results into its card (``policies/default/card.json``).

    python benchmarks/card_benchmarks.py --suite benchmarks/suite12 --suite benchmarks/losschoice

Per suite folder (its ``results.json``): Δm % per problem (mean over seeds) and the mean rank
among every method of that suite for each shipped method it ran, the cost runs (median over
problems of the median- and mean-step ratios to EW) and, where the folder holds
``ablations/runs.json``, the mean Δm of each ablation variant.
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


def suite_record(folder: Path) -> dict[str, object]:
    """What the card records of one suite folder (see the module)."""
    results = json.loads((folder / "results.json").read_text())
    methods = results["config"]["methods"]
    record: dict[str, object] = {
        "source": f"{folder} ({len(results['config']['seeds'])} seeds, Δm % vs single-task "
        "learning, lower is better)",
        "code": sorted(results.get("fingerprints", {})),
    }
    for method in (m for m in METHODS if m in methods):
        cells = _delta_m(results["runs"], method, results["config"]["problems"])
        record[method] = {
            "delta_m": cells,
            "mean_delta_m": round(statistics.fmean(cells.values()), 2),
            f"mean_rank_of_{len(methods)}": round(results["mean_rank"][method], 2),
        }
    costs = [json.loads(p.read_text()) for p in (folder / "runs").glob("cost__*__*.json")]
    frozen = [c for c in costs if c["job"]["method"] == METHODS[0]]
    if frozen:
        record["cost_x_ew"] = {
            "median_step": round(statistics.median(c["cost_ratio"] for c in frozen), 3),
            "mean_step": round(statistics.median(c["cost_ratio_mean"] for c in frozen), 3),
            "steps": frozen[0]["steps"],
        }
    runs = folder / "ablations" / "runs.json"
    if runs.exists():  # results["stl"]: per problem, each task's single-task metric
        by_variant = delta_ms(json.loads(runs.read_text()), results["stl"])
        record["ablations_mean_delta_m"] = {
            v: round(statistics.fmean(statistics.fmean(x) for x in per.values()), 2)
            for v, per in by_variant.items()
        }
    return record


def main() -> None:
    """Record every ``--suite`` in the card of ``policies/default``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, action="append", required=True)
    args = parser.parse_args()
    record = {folder.name: suite_record(folder) for folder in args.suite}
    record_benchmarks(policy_folder("default"), record)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
