"""Per-step cost of target normalisation (issues 12 and 13): EW and the shipped default, each with
and without ``normalize_targets``, against plain EW, interleaved in one process.

Every step runs each arm once on the same batch (the order alternating, so no arm gains from
going first): forward, ``composer.backward``, Adam step. Printed per problem: each arm's median
step and its median and mean ratio to EW. One intra-op thread; run it on an otherwise idle
machine::

    python benchmarks/target_cost.py --problems gradnorm-synth-t10,offset-scale --steps 400
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch
from stack_cost import time_arms  # benchmarks/stack_cost.py, beside this script

from lossrag.bench.problems import get_problem
from lossrag.compose import wrap

#: ``(method, wrap options)`` of each arm; the first is the reference.
ARMS: list[tuple[str, dict[str, Any]]] = [
    ("ew", {}),
    ("ew", {"normalize_targets": "auto"}),
    ("lossrag-default", {}),  # normalize_targets="auto", its own choice
    ("lossrag-default", {"normalize_targets": False}),
]


def measure(name: str, steps: int) -> list[list[float]]:
    """Per arm, the step times (seconds) after 20 warm-up steps."""
    problem = get_problem(name)
    arms = []
    for method, options in ARMS:
        model = problem.build_model(0)
        opt = torch.optim.Adam(model.parameters(), lr=problem.budget.lr)
        trunk = getattr(model, "trunk", None)
        composer = wrap(model, problem.tasks, method, shared=trunk, seed=0, **options)
        arms.append((opt, _step(model, composer)))
    return time_arms(problem, arms, steps, warmup=20)


def _step(model: torch.nn.Module, composer: Any) -> Any:
    return lambda x, y: composer.backward(model(x), y)


def main() -> None:
    """Parse the arguments, measure every problem, print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", default="gradnorm-synth-t10,offset-scale")
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.problems.split(","):
        times = measure(name, args.steps)
        median, total = statistics.median(times[0]), sum(times[0])
        for (method, options), t in zip(ARMS, times, strict=True):
            label = f"{method} {options or ''}".strip()
            print(
                f"{name:20s} {label:48s} {statistics.median(t) * 1e3:6.2f} ms  "
                f"median ×{statistics.median(t) / median:.3f}  mean ×{sum(t) / total:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
