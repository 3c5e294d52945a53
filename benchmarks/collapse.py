"""Why four methods collapse at their defaults on some suite problems (issue 15): one training
run of a method with its settings changed, every task's test metric printed::

    python benchmarks/collapse.py digits-mtl pbi '{"theta": 0}'
    python benchmarks/collapse.py gradnorm-synth-t2 stch '{}' --normalize-targets

Findings and the runs behind them: ``benchmarks/collapse.md``.
"""

from __future__ import annotations

import argparse
import json

import torch

from lossrag.bench.fit import fit
from lossrag.bench.problems import get_problem
from lossrag.weighting import make_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("problem")
    parser.add_argument("method")
    parser.add_argument("settings", nargs="?", default="{}", help="JSON: the method's arguments")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--normalize-targets", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = json.loads(args.settings)
    method = make_method(args.method, **settings) if settings else args.method
    normalize = True if args.normalize_targets else None
    result = fit(get_problem(args.problem), method, args.seed, normalize_targets=normalize)
    metrics = {task: round(value, 4) for task, value in result.metrics.items()}
    print(args.problem, args.method, settings, f"normalize_targets={normalize}", metrics)


if __name__ == "__main__":
    main()
