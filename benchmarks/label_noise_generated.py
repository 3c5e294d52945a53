"""Flipped labels on fresh generated problems (issue 13): does the shipped policy switch a
classification task with flipped training labels to another loss, leave clean ones alone, and
does it help?

Problems are drawn from ``lossrag.train.generate`` (2–6 tasks, 70 % classification, no junk, no
duplicates, 800–1500 steps), numbered from ``--first`` (the default recipe trains on problems
0–399 and 500 000 on, and holds out 1 000 000 on: these are in none), with every classification
task's training and validation labels flipped at a rate drawn from ``--flip`` (the test labels
stay clean; before commit SEE_BELOW the generator flipped them too, which shrank the gaps by the
flip rate). Each problem trains twice from seed 0: the shipped policy, and
the same policy kept on its natural losses (``max_terms=1``). One JSON line per problem, then a
summary over the classification tasks with at least four classes (the only ones with label-noise
evidence)::

    python benchmarks/label_noise_generated.py --flip 0.3 0.4 --first 20000 --count 10
    python benchmarks/label_noise_generated.py --flip 0 0 --first 20000 --count 10
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from lossrag.bench.fit import fit
from lossrag.policy import load_policy
from lossrag.policy.evidence import MIN_CLASSES
from lossrag.train.generate import Distribution, sample_problem


def main() -> None:
    """Parse the arguments, train both arms on each problem, print one line each and a summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flip", type=float, nargs=2, default=(0.3, 0.4))
    parser.add_argument("--first", type=int, default=20000)
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist = Distribution(
        tasks=(2, 6),
        classification=0.7,
        junk=0.0,
        duplicate=0.0,
        conflict=0.0,
        label_flip=tuple(args.flip),
        steps=(800, 1500),
    )
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
            if s.kind == "classification" and s.classes >= MIN_CLASSES
        }
        on = {t: policy.active[t] for t in tasks if policy.active[t] != [policy.natural[t]]}
        for t in tasks:
            evidenced += 1
            switched += t in on
            gains.append(result.metrics[t] - natural.metrics[t])
        print(
            json.dumps(
                {
                    "problem": seed,
                    "flip": {t: round(s.noise, 3) for t, s in tasks.items()},
                    "switched": on,
                    "evidence": {t: round(policy.gross.get(t, 0.0), 3) for t in tasks},
                    "default": {k: round(v, 4) for k, v in result.metrics.items()},
                    "natural losses": {k: round(v, 4) for k, v in natural.metrics.items()},
                }
            ),
            flush=True,
        )
    if gains:
        print(
            f"classification tasks with >= {MIN_CLASSES} classes: {switched}/{evidenced} switched; "
            f"test accuracy, default minus natural losses: mean {statistics.mean(gains):+.4f}, "
            f"min {min(gains):+.4f}, max {max(gains):+.4f}"
        )


if __name__ == "__main__":
    main()
