"""A user trial's case for the shipped policy's loss switching (issue 13): a task left with
redescending robust losses only could lose its targets for good, until the rescue
(``lossrag/policy/rescue.py``) brought its natural loss back.

A small CNN on scikit-learn's digits (two 3×3 convolutions, max-pool, a 64-wide linear trunk,
one linear head per task), four tasks: ``digit`` (10 classes), ``mass`` (the ink sum × 3.4, about
1000 ± 120, raw units), ``row`` (the vertical centre of mass, about 3.5) and ``junk`` (random
5-class labels). 15 % of the *training* ``mass`` targets get +3000 (one-sided gross errors;
``--share`` and ``--offset`` change them); the test split is clean. Adam (lr 1e-3), batches of
64 drawn with replacement, ``--steps`` steps, the shipped policy as a user wraps it
(``lossrag.wrap(model, tasks, "default", shared=model.trunk)``), EW with
``normalize_targets="auto"`` beside it.

Printed per seed: the clean-test metrics, the step at which ``mass``'s L2 went off (if it did),
the losses active for ``mass`` at the end and its last training loss (the first active term's,
in standard units: ``tukey(c=0.5)``'s plateau is 0.5²/6 = 0.04167, every residual beyond ``c``,
no gradient). Run single-process::

    python benchmarks/outlier_collapse.py --seeds 0 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import lossrag

TASKS = [
    lossrag.Task("digit", kind="classification", num_classes=10, metric="accuracy"),
    lossrag.Task("mass", kind="regression", metric="mae"),
    lossrag.Task("row", kind="regression", metric="mae"),
    lossrag.Task("junk", kind="classification", num_classes=5, metric="accuracy"),
]


def data(
    offset: float = 3000.0, share: float = 0.15, train: int = 1200
) -> tuple[tuple[torch.Tensor, dict], tuple[torch.Tensor, dict]]:
    """Train and test splits; ``share`` of the training ``mass`` targets get ``+offset``."""
    digits = load_digits()
    rng = np.random.RandomState(1234)
    order = rng.permutation(len(digits.images))
    images, labels = digits.images[order], digits.target[order]
    ink = images.sum((1, 2))
    targets = {
        "digit": torch.tensor(labels),
        "mass": torch.tensor(ink * 3.4, dtype=torch.float32),
        "row": torch.tensor((images * np.arange(8)[None, :, None]).sum((1, 2)) / ink).float(),
        "junk": torch.tensor(rng.randint(0, 5, len(labels))),
    }
    x = torch.tensor(images / 16.0, dtype=torch.float32).unsqueeze(1)
    tr = {k: v[:train].clone() for k, v in targets.items()}
    bad = torch.rand(train, generator=torch.Generator().manual_seed(99)) < share
    tr["mass"] = torch.where(bad, tr["mass"] + offset, tr["mass"])
    return (x[:train], tr), (x[train:], {k: v[train:] for k, v in targets.items()})


class CNN(nn.Module):
    """Conv trunk and one linear head per task."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(512, 64), nn.ReLU(),
        )  # fmt: skip
        sizes = {"digit": 10, "mass": 1, "row": 1, "junk": 5}
        self.heads = nn.ModuleDict({k: nn.Linear(64, n) for k, n in sizes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        out = {k: head(h) for k, head in self.heads.items()}
        return {k: v.squeeze(-1) if k in ("mass", "row") else v for k, v in out.items()}


def run(policy: str, seed: int, steps: int, offset: float = 3000.0, share: float = 0.15) -> dict:
    """One run; the clean-test metrics and what happened to ``mass``'s losses."""
    (x, y), (xt, yt) = data(offset, share)
    torch.manual_seed(seed)
    model = CNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    options = {"normalize_targets": "auto"} if policy == "ew" else {}
    composer = lossrag.wrap(model, TASKS, policy, shared=model.trunk, seed=seed, **options)
    draw = torch.Generator().manual_seed(seed)
    l2_off, last = None, None
    for step in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=draw)
        opt.zero_grad()
        composer.loss(model(x[idx]), {k: v[idx] for k, v in y.items()}).backward()
        opt.step()
        if policy == "default":
            record = composer.last_record
            assert record is not None
            on = [t.loss for t in record.terms if t.task == "mass" and t.active]
            if l2_off is None and "l2" not in on:
                l2_off = step
            last = record.losses["mass"], on
    composer.close()
    model.eval()
    with torch.no_grad():
        out = model(xt)
    metrics = {
        "digit": float((out["digit"].argmax(1) == yt["digit"]).float().mean()),
        "mass": float((out["mass"] - yt["mass"]).abs().mean()),
        "row": float((out["row"] - yt["row"]).abs().mean()),
        "junk": float((out["junk"].argmax(1) == yt["junk"]).float().mean()),
    }
    row = {"policy": policy, "seed": seed, "metrics": {k: round(v, 4) for k, v in metrics.items()}}
    if last is not None:
        loss, on = last
        row |= {"l2_off_at": l2_off, "mass_losses": on, "mass_last_loss": round(loss, 5)}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--policies", nargs="+", default=["default", "ew"])
    parser.add_argument("--offset", type=float, default=3000.0, help="the gross error")
    parser.add_argument("--share", type=float, default=0.15, help="of the training targets")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for policy in args.policies:
        for seed in args.seeds:
            row = run(policy, seed, args.steps, args.offset, args.share)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
