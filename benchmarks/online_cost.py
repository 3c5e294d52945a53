"""Per-step cost of online LossRAG against EW for meta_every 4 and 10 and each query objective.

    python benchmarks/online_cost.py  [--problems P1,P2] [--out benchmarks/online_cost.json]

Each row is one ``lossrag bench`` cost job (EW and the method interleaved in one process, one
thread, 120 steps): ``cost_ratio`` compares median steps, ``cost_ratio_mean`` mean steps, which
count the meta-steps and the policy's refreshes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lossrag._util import atomic_write_text
from lossrag.bench.jobs import Job, measure_cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="mnist1d-noisy,qm9,multifashion4")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/online_cost.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for problem in args.problems.split(","):
        for every in (4, 10):
            for objective in ("sum", "common", "transfer"):
                job = Job(kind="cost", problem=problem, method="lossrag-online", seed=0, steps=120)
                result = measure_cost(job, meta_every=every, meta_objective=objective)
                rows.append({"problem": problem, "meta_every": every, "objective": objective})
                rows[-1].update({k: round(v, 3) for k, v in result.items()})
                print(json.dumps(rows[-1]), flush=True)
    atomic_write_text(args.out, json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
