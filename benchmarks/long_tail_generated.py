"""Long-tailed classes on fresh generated problems (issue 13): does a loss other than
cross-entropy serve a long-tailed task's metric, so that class imbalance could be evidence for
switching?

Problems are drawn from ``lossrag.train.generate`` (2–5 tasks, 70 % classification, no junk, no
duplicates, clean labels, 600–1000 steps), numbered from ``--first`` (outside every training
set), each with one long-tailed classification task (its most frequent class 10–50 times as
frequent as its rarest; tasks with fewer than three classes are left out). The long-tailed task
trains with cross-entropy and with each loss of ``--losses`` at its card defaults, every other
task with its natural loss, under the shipped policy kept on those losses (``max_terms=1``),
seed 0; it is scored by macro-F1 and by accuracy (the training does not depend on the metric).
``--test even`` draws the test split without the tail (a shift of the class prior between
training and test, as on ``mnist1d-imbalanced``); ``--test tail`` (default) keeps it, as data
whose imbalance is its own::

    python benchmarks/long_tail_generated.py --first 30000 --count 14 --test tail
    python benchmarks/long_tail_generated.py --first 30000 --count 14 --test even
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from lossrag.bench.fit import fit
from lossrag.bench.problems.base import LossChoice
from lossrag.policy import load_policy
from lossrag.train.generate import Distribution, GeneratedProblem, sample_problem

METRICS = ("f1", "accuracy")


def scores(problem: GeneratedProblem, tail: int, loss: str, even: bool) -> dict[str, float]:
    """The long-tailed task's macro-F1 and accuracy on the test split when it trains with
    ``loss``."""
    out = {}
    for metric in METRICS:
        specs = list(problem.specs)
        specs[tail] = specs[tail].model_copy(update={"metric": metric})
        losses = {} if loss == "ce" else {f"t{tail}": LossChoice(loss=loss)}
        fields = {**problem.model_dump(), "specs": specs, "losses": losses}
        variant = GeneratedProblem(**{**fields, "tail_in_test": not even})
        result = fit(variant, load_policy("default", max_terms=1), 0, normalize_targets="auto")
        out[metric] = result.metrics[f"t{tail}"]
    return out


def main() -> None:
    """Parse the arguments, train every arm on each problem, print one line each and a summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--first", type=int, default=30000)
    parser.add_argument("--count", type=int, default=14)
    parser.add_argument("--losses", default="focal")
    parser.add_argument("--test", choices=("tail", "even"), default="tail")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist = Distribution(
        tasks=(2, 5),
        classification=0.7,
        junk=0.0,
        duplicate=0.0,
        conflict=0.0,
        label_flip=(0.0, 0.0),
        imbalance=1.0,
        imbalance_ratio=(10.0, 50.0),
        steps=(600, 1000),
    )
    losses = args.losses.split(",")
    gains: dict[tuple[str, str], list[float]] = {(x, m): [] for x in losses for m in METRICS}
    for seed in range(args.first, args.first + args.count):
        problem = sample_problem(dist, seed)
        tail = next((i for i, s in enumerate(problem.specs) if s.imbalance > 1), None)
        if tail is None or problem.specs[tail].classes < 3:
            continue
        spec = problem.specs[tail]
        found = {x: scores(problem, tail, x, args.test == "even") for x in ["ce", *losses]}
        for (x, m), g in gains.items():
            g.append(found[x][m] - found["ce"][m])
        row = {"problem": seed, "classes": spec.classes, "ratio": round(spec.imbalance, 1)}
        row.update({x: {m: round(v, 4) for m, v in s.items()} for x, s in found.items()})
        print(json.dumps(row), flush=True)
    for (x, m), g in gains.items():
        if g:
            wins = sum(v > 0 for v in g)
            print(
                f"{x} minus ce, {m}, test split {args.test}: mean {statistics.mean(g):+.4f}, "
                f"min {min(g):+.4f}, max {max(g):+.4f}, better on {wins} of {len(g)}"
            )


if __name__ == "__main__":
    main()
