"""A hard task beside tasks that learn fast (a user trial's problem, issue 13's starving target).

An MLP (64 → 64 → 32, ReLU, one linear head per task) on scikit-learn's digits, 70/30 split
(``random_state=0``): ``digit`` (10 classes, accuracy), ``parity`` (2 classes, accuracy) and
``ink`` (the raw pixel sum, about 313 ± 37, MAE). Adam (lr 1e-3), 600 steps of 64 samples drawn
with replacement, every method with ``normalize_targets="auto"`` (so the comparison is of the
weighting alone). Printed: every task's test metric per method, mean ± std over seeds, and
whether a task is more than 3 % worse (relative) than the better of EW and FAMO
(``NAME@KEY=JSON;...``: a method, or the shipped policy ``default``, with settings
overridden; an epoch of the 1 257 training samples is about 20 steps)::

    python benchmarks/starving_mlp.py --seeds 5 --methods \
        default,ew,famo,geometricmean,dbmtl,lossrag,default@max_ratio=2,default@max_ratio=1
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import lossrag
import lossrag.policy
import lossrag.weighting

TASKS = [
    lossrag.Task("digit", kind="classification", num_classes=10, metric="accuracy"),
    lossrag.Task("parity", kind="classification", num_classes=2, metric="accuracy"),
    lossrag.Task("ink", kind="regression", metric="mae"),
]
HIGHER = {"digit": True, "parity": True, "ink": False}


class Net(nn.Module):
    """A shared two-layer trunk and one linear head per task."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        sizes = {"digit": 10, "parity": 2, "ink": 1}
        self.heads = nn.ModuleDict({k: nn.Linear(32, n) for k, n in sizes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        out = {k: head(h) for k, head in self.heads.items()}
        return {**out, "ink": out["ink"].squeeze(-1)}


def data() -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
    """Training inputs and targets, test inputs and targets."""
    x, digit = load_digits(return_X_y=True)
    parts = train_test_split(x, digit, test_size=0.3, random_state=0)
    splits = []
    for images, labels in ((parts[0], parts[2]), (parts[1], parts[3])):
        targets = {
            "digit": torch.tensor(labels),
            "parity": torch.tensor(labels % 2),
            "ink": torch.tensor(images.sum(1), dtype=torch.float32),
        }
        splits += [torch.tensor(images / 16.0, dtype=torch.float32), targets]
    return splits[0], splits[1], splits[2], splits[3]


def run(method: str, seed: int, steps: int = 600) -> dict[str, float]:
    """Every task's test metric after ``steps`` steps of ``method``."""
    x, y, x_test, y_test = data()
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    policy: str | lossrag.weighting.Method = method
    if "@" in method:  # a method with settings overridden (the shipped policy's, by name)
        name, settings = method.split("@", 1)
        kw = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in settings.split(";"))}
        load = lossrag.policy.load_policy if name == "default" else lossrag.weighting.make_method
        policy = load(name, **kw)
    composer = lossrag.wrap(
        model, TASKS, policy, shared=model.trunk, seed=seed, normalize_targets="auto"
    )
    order = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=order)
        opt.zero_grad()
        composer.backward(model(x[idx]), {k: v[idx] for k, v in y.items()})
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(x_test)
    return {
        "digit": (out["digit"].argmax(1) == y_test["digit"]).float().mean().item(),
        "parity": (out["parity"].argmax(1) == y_test["parity"]).float().mean().item(),
        "ink": (out["ink"] - y_test["ink"]).abs().mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="default,ew,famo,geometricmean,dbmtl,lossrag")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error("--seeds: at least 2 (the table gives each metric's spread)")
    torch.set_num_threads(1)
    methods = args.methods.split(",")
    runs = {m: [run(m, s) for s in range(args.seeds)] for m in methods}
    means = {m: {t: statistics.fmean(r[t] for r in rs) for t in HIGHER} for m, rs in runs.items()}
    print(f"| method | {' | '.join(HIGHER)} | starved |\n|---|---|---|---|---|")
    for m, rs in runs.items():
        cells = [f"{means[m][t]:.3f} ± {statistics.stdev(r[t] for r in rs):.3f}" for t in HIGHER]
        starved = [
            t
            for t in HIGHER
            if {"ew", "famo"} <= set(means)
            and _worse(means[m][t], [means["ew"][t], means["famo"][t]], HIGHER[t]) > 0.03
        ]
        print(f"| {m} | {' | '.join(cells)} | {', '.join(starved) or '-'} |")


def _worse(value: float, references: list[float], higher: bool) -> float:
    """How much worse ``value`` is, relative, than the better reference."""
    best = max(references) if higher else min(references)
    return (best - value) / abs(best) if higher else (value - best) / abs(best)


if __name__ == "__main__":
    main()
