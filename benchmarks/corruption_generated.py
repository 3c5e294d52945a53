"""Corrupted targets on fresh generated problems (issue 13): does the shipped policy switch a
task with corrupted training targets to another loss, leave clean ones alone, and does it help?

Problems are drawn from ``lossrag.train.generate`` (2–6 tasks, no junk, no duplicates, 800–1500
steps), numbered from ``--first`` (the default recipe trains on problems 0–399 and 500 000 on,
and holds out 1 000 000 on: these are in none). Two families:

- ``--flip LO HI`` (70 % classification): every classification task's training and validation
  labels flipped at a rate drawn from the range (the test labels stay clean; before commit
  ``b41c3e1`` the generator flipped them too, which shrank the gaps by the flip rate); the
  summary covers the classification tasks with at least four classes (the only ones with
  label-noise evidence), by test accuracy.
- ``--outliers LO HI`` (30 % classification): every regression task scored by MAE, a share of
  its training and validation targets drawn from the range carrying one-sided gross errors (the
  test split clean); the summary covers the regression tasks, by the relative change of test
  MAE (``natural / default − 1``: positive when the default is better).

Each problem trains twice from seed 0: the shipped policy, and the same policy kept on its
natural losses (``max_terms=1``). One JSON line per problem, then the summary::

    python benchmarks/corruption_generated.py --flip 0.3 0.4 --first 20000 --count 10
    python benchmarks/corruption_generated.py --flip 0 0 --first 20000 --count 10
    python benchmarks/corruption_generated.py --outliers 0.1 0.2 --first 40000 --count 10
    python benchmarks/corruption_generated.py --outliers 0 0 --first 40000 --count 10
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from lossrag.bench.fit import fit
from lossrag.policy import load_policy
from lossrag.policy.evidence import MIN_CLASSES
from lossrag.train.generate import Distribution, TaskSpec, sample_problem


def distribution(
    flip: tuple[float, float] | None, outliers: tuple[float, float] | None
) -> Distribution:
    """The family's problems: flipped labels or gross errors in the regression targets."""
    common = {"tasks": (2, 6), "junk": 0.0, "duplicate": 0.0, "conflict": 0.0, "steps": (800, 1500)}
    if outliers is not None:
        share = (outliers[0], outliers[1])
        return Distribution(
            classification=0.3,
            label_flip=(0.0, 0.0),
            outliers=1.0,
            outlier_share=share,
            mae=1.0,
            **common,
        )
    return Distribution(classification=0.7, label_flip=flip or (0.3, 0.4), **common)


def summarised(spec: TaskSpec, outliers: bool) -> bool:
    """Whether a task counts in the summary: a regression in the outliers family, a
    classification with label-noise evidence otherwise."""
    if outliers:
        return spec.kind == "regression"
    return spec.kind == "classification" and spec.classes >= MIN_CLASSES


def main() -> None:
    """Parse the arguments, train both arms on each problem, print one line each and a summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    family = parser.add_mutually_exclusive_group()
    family.add_argument("--flip", type=float, nargs=2)
    family.add_argument("--outliers", type=float, nargs=2)
    parser.add_argument("--first", type=int, default=20000)
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist = distribution(args.flip, args.outliers)
    gains: list[float] = []
    switched = evidenced = 0
    for seed in range(args.first, args.first + args.count):
        problem = sample_problem(dist, seed)
        policy = load_policy("default")
        result = fit(problem, policy, 0, normalize_targets="auto")
        natural = fit(problem, load_policy("default", max_terms=1), 0, normalize_targets="auto")
        tasks = {
            f"t{i}": s
            for i, s in enumerate(problem.specs)
            if summarised(s, args.outliers is not None)
        }
        on = {t: policy.active[t] for t in tasks if policy.active[t] != [policy.natural[t]]}
        for t in tasks:
            evidenced += 1
            switched += t in on
            if args.outliers is not None:
                gains.append(natural.metrics[t] / result.metrics[t] - 1)
            else:
                gains.append(result.metrics[t] - natural.metrics[t])
        corrupt = {
            t: round(s.outliers if args.outliers is not None else s.noise, 3)
            for t, s in tasks.items()
        }
        print(
            json.dumps(
                {
                    "problem": seed,
                    "corrupted": corrupt,
                    "switched": on,
                    "evidence": {t: round(policy.gross.get(t, 0.0), 3) for t in tasks},
                    "default": {k: round(v, 4) for k, v in result.metrics.items()},
                    "natural losses": {k: round(v, 4) for k, v in natural.metrics.items()},
                }
            ),
            flush=True,
        )
    if gains:
        what = (
            "regression tasks: {}/{} switched; test MAE, natural losses / default − 1"
            if args.outliers is not None
            else f"classification tasks with >= {MIN_CLASSES} classes: {{}}/{{}} switched; "
            "test accuracy, default minus natural losses"
        )
        print(
            what.format(switched, evidenced)
            + f": mean {statistics.mean(gains):+.4f}, min {min(gains):+.4f}, max {max(gains):+.4f}"
        )


if __name__ == "__main__":
    main()
