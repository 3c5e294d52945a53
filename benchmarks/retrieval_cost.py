"""What one retrieval of the shipped default costs, in EW steps (issue 13's cost target).

Per problem: EW and ``lossrag-default`` train side by side for ``--steps`` steps (interleaved,
the same batches); then the default's retrieval work (every task's candidates found and measured
on the model at the last batch) is timed ``--repeats`` times. Printed: the median retrieval in
milliseconds and in EW steps (EW's median step), per task too. One intra-op thread; run it on an
otherwise idle machine::

    python benchmarks/retrieval_cost.py --problems qm9-raw,gradnorm-synth-t10,mnist1d-outliers
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lossrag.bench.jobs import wrapped
from lossrag.bench.problems import get_problem


def measure(name: str, steps: int, repeats: int) -> tuple[float, float, int]:
    """``(median retrieval ms, EW's median step ms, tasks)`` on problem ``name``."""
    problem = get_problem(name)
    splits = problem.load(0)
    arms = [wrapped(problem, splits, method, 0) for method in ("ew", "lossrag-default")]
    ew_times: list[float] = []
    order = torch.Generator().manual_seed(0)
    done = 0
    while done < steps:
        for x, y in problem.train_batches(splits, order):
            for i in (0, 1) if done % 2 == 0 else (1, 0):
                model, opt, composer = arms[i]
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                composer.backward(model(x), y)
                opt.step()
                if i == 0:
                    ew_times.append(time.perf_counter() - t0)
            done += 1
            if done >= steps:
                break
    model, _, composer = arms[1]
    policy = composer.method
    outputs = model(x)
    features = composer.take_features()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for task in policy.tasks.values():
            policy._measure(task, outputs, y, features)
        times.append(time.perf_counter() - t0)
    ew = statistics.median(ew_times[len(ew_times) // 3 :])
    return statistics.median(times) * 1e3, ew * 1e3, len(policy.tasks)


def main() -> None:
    """Parse the arguments, measure every problem, print the costs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", default="qm9-raw,gradnorm-synth-t10,mnist1d-outliers")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.problems.split(","):
        ms, ew, tasks = measure(name, args.steps, args.repeats)
        print(
            f"{name:20s} retrieval {ms:6.1f} ms  EW step {ew:5.2f} ms  "
            f"= {ms / ew:5.1f} EW steps for {tasks} tasks ({ms / ew / tasks:.2f} per task)",
            flush=True,
        )


if __name__ == "__main__":
    main()
