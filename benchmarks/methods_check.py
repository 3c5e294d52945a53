"""Every method that issue 15 added, on every suite problem: 60 steps through ``lossrag.wrap``,
built exactly as ``lossrag bench`` builds a run (model, Adam, composer). One line per (problem,
method): ``ok`` with the median step and the number of skipped steps, ``NONFINITE`` when a
parameter is not finite after the steps, or the error::

    python benchmarks/methods_check.py > benchmarks/methods_check.txt
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lossrag.bench.jobs import wrapped
from lossrag.bench.problems import get_problem

PROBLEMS = (
    "digits-mtl,gradnorm-synth-t2,mnist1d-mtl,mnist1d-noisy,gradnorm-synth-t10,qm9,qm9-raw,"
    "multifashion,multifashion4,gradnorm-synth-t40,offset-scale,manyclass-fast,"
    "mnist1d-outliers,multifashion-noisy,mnist1d-imbalanced"
)
METHODS = "dbmtl,go4align,excessmtl,sdmgrad,modo,crmogm,cosmos,pbi,perf,curriculum,geometricmean"


def check(name: str, method: str, steps: int) -> str:
    """``steps`` steps of ``method`` on problem ``name`` (seed 0); the line to print."""
    problem = get_problem(name)
    splits = problem.load(0)
    model, opt, composer = wrapped(problem, splits, method, 0, "cpu")
    times: list[float] = []
    skipped = 0
    order = torch.Generator().manual_seed(0)
    while len(times) < steps:
        for x, y in problem.train_batches(splits, order):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            skipped += bool(composer.backward(model(x), y).skipped)
            opt.step()
            times.append(time.perf_counter() - t0)
            if len(times) >= steps:
                break
    composer.close()
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    median = statistics.median(times) * 1e3
    return f"{'ok' if finite else 'NONFINITE'} median {median:.1f} ms skipped {skipped}"


def main() -> None:
    """Parse the arguments; check every (problem, method)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", default=PROBLEMS)
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.problems.split(","):
        for method in args.methods.split(","):
            try:
                line = check(name, method, args.steps)
            except Exception as err:  # reported, and the check goes on
                line = f"ERROR {type(err).__name__}: {err}"
            print(f"{name:20s} {method:14s} {line}", flush=True)


if __name__ == "__main__":
    main()
