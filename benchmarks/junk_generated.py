"""Junk tasks on fresh generated problems (issue 13): does the shipped policy give every junk task a
lower mean weight than every scored task?

Problems are drawn from ``lossrag.train.generate`` with 4–10 tasks, 30 % junk, 1500–2500 steps
and target noise up to 0.5, numbered from ``--first`` (the default recipe trains on problems below
10 000 and holds out 1 000 000 on: these are in neither), skipping those without a junk task or
with fewer than two scored tasks. One JSON line per problem: whether the ranking holds, the mean
weights, the test metrics::

    python benchmarks/junk_generated.py --first 5000 --count 12
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from lossrag.bench.fit import fit
from lossrag.inspect import mean_weights
from lossrag.record import read_trace
from lossrag.train.generate import Distribution, sample_problem

DISTRIBUTION = Distribution(tasks=(4, 10), junk=0.3, steps=(1500, 2500), noise=(0.0, 0.5))


def main() -> None:
    """Parse the arguments, train the shipped policy on each problem, print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--first", type=int, default=5000)
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--policy", default="lossrag-default")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seed, held = args.first, 0
    with tempfile.TemporaryDirectory() as folder:
        while held < args.count:
            problem = sample_problem(DISTRIBUTION, seed)
            seed += 1
            junk = {f"t{i}" for i, s in enumerate(problem.specs) if s.junk}
            if not junk or len(problem.specs) - len(junk) < 2:
                continue
            held += 1
            trace = Path(folder) / f"{seed - 1}.jsonl"
            result = fit(problem, args.policy, 0, trace=trace)
            weights = {t: w for t, w in mean_weights(read_trace(trace)).items() if w is not None}
            below = max(weights[t] for t in junk) < min(
                w for t, w in weights.items() if t not in junk
            )
            print(
                json.dumps(
                    {
                        "problem": seed - 1,
                        "junk_below_every_scored_task": below,
                        "weights": {t: round(w, 3) for t, w in weights.items()},
                        "junk": sorted(junk),
                        "metrics": {k: round(v, 4) for k, v in result.metrics.items()},
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
