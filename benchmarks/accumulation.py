"""Gradient accumulation with small micro-batches: does ``accumulate(n)`` train like one batch?

A small CNN on generated 16×16 images of one blob each, four tasks of mixed kinds and scales:
``shape`` (4 classes, cross-entropy, accuracy), ``mass`` (regression in raw units, 200–800, MAE),
``bright`` (binary, accuracy) and ``pos`` (the blob's centre in pixels, 2 values, MAE). Adam
(lr 2e-3), 300 optimizer steps of 32 samples, tested on 512 fresh images. Each method trains one
batch of 32 per step (``micro 32``) and ``accumulate(32 // m)`` of micro-batches of ``m``
samples: the shipped policy (which normalises the raw targets itself) and EW with
``normalize_targets=True``. Every task's metric is printed, mean ± std over the seeds::

    python benchmarks/accumulation.py --seeds 0 1 2 --micro 32 8 1
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from typing import Any

import torch
from torch import nn

import lossrag
from lossrag.bench.runner import code_fingerprint

TASKS = [
    lossrag.Task("shape", kind="classification", num_classes=4, metric="accuracy"),
    lossrag.Task("mass", kind="regression", metric="mae"),
    lossrag.Task("bright", kind="multilabel", num_classes=1, metric="accuracy"),
    lossrag.Task("pos", kind="regression", metric="mae"),
]
OPTIONS: dict[str, dict[str, Any]] = {"default": {}, "ew": {"normalize_targets": True}}


def blobs(n: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` noisy images of a disc, square or bar, and the four tasks' targets."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    shape = torch.randint(0, 4, (n,), generator=g)
    cx, cy = (torch.rand(n, generator=g) * 8 + 4 for _ in range(2))
    radius = (torch.rand(n, generator=g) * 2 + 1.5)[:, None, None]
    amplitude = torch.rand(n, generator=g) * 1.5 + 0.5
    dx, dy = (xx[None] - cx[:, None, None]).abs(), (yy[None] - cy[:, None, None]).abs()
    masks = torch.stack(
        [
            dx**2 + dy**2 <= radius**2,
            (dx <= radius) & (dy <= radius),
            (dx <= radius * 1.6) & (dy <= radius * 0.5),
            (dx <= radius * 0.5) & (dy <= radius * 1.6),
        ],
        1,
    ).float()[torch.arange(n), shape]
    images = masks * amplitude[:, None, None] + 0.15 * torch.randn(n, 16, 16, generator=g)
    targets = {
        "shape": shape,
        "mass": 200.0 + 6.0 * masks.sum((1, 2)) * amplitude,
        "bright": (amplitude > 1.25).float()[:, None],
        "pos": torch.stack([cx, cy], 1),
    }
    return images[:, None], targets


class CNN(nn.Module):
    """Two convolutions and a 32-wide layer shared, one linear head per task."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(256, 32),
            nn.ReLU(),
        )
        widths = {"shape": 4, "mass": 1, "bright": 1, "pos": 2}
        self.heads = nn.ModuleDict({name: nn.Linear(32, w) for name, w in widths.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.trunk(x)
        out = {name: head(z) for name, head in self.heads.items()}
        out["mass"] = out["mass"].squeeze(1)
        return out


def train(method: str, micro: int, seed: int, steps: int) -> dict[str, float]:
    """Every task's test metric after ``steps`` optimizer steps of 32 samples."""
    x, y = blobs(2048, 100 + seed)
    torch.manual_seed(seed)
    model = CNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    composer = lossrag.wrap(model, TASKS, method, shared=model.trunk, seed=seed, **OPTIONS[method])
    g = torch.Generator().manual_seed(seed)
    order = torch.cat(
        [torch.randperm(len(x), generator=g) for _ in range(steps * 32 // len(x) + 1)]
    )
    for step in range(steps):
        rows = order[step * 32 : step * 32 + 32]
        opt.zero_grad()
        window = composer.accumulate(32 // micro) if micro < 32 else contextlib.nullcontext()
        with window:
            for part in rows.split(micro):
                composer.loss(model(x[part]), {k: v[part] for k, v in y.items()}).backward()
        opt.step()
    composer.close()
    xt, yt = blobs(512, 200 + seed)
    with torch.no_grad():
        out = model(xt)
    return {
        "shape": float((out["shape"].argmax(1) == yt["shape"]).float().mean()),
        "mass": float((out["mass"] - yt["mass"]).abs().mean()),
        "bright": float(((out["bright"] > 0).float() == yt["bright"]).float().mean()),
        "pos": float((out["pos"] - yt["pos"]).abs().mean()),
    }


def main() -> None:
    """Train every (method, micro-batch size, seed); print one row per method and size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--micro", type=int, nargs="+", default=[32, 8, 1])
    parser.add_argument("--methods", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    bad = [m for m in args.micro if not (1 <= m <= 32 and 32 % m == 0)]
    if bad:
        parser.error(f"--micro: each size must divide the batch of 32, got {bad}")
    torch.set_num_threads(1)
    print(f"code {code_fingerprint()}, {args.steps} steps, seeds {args.seeds}")
    print(f"{'method':<8} {'micro':>5}  " + "  ".join(f"{t.name:>13}" for t in TASKS))
    for method in args.methods:
        for micro in args.micro:
            runs = [train(method, micro, seed, args.steps) for seed in args.seeds]
            cells = []
            for task in TASKS:
                values = [run[task.name] for run in runs]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):>7.3f} ± {spread:.3f}")
            print(f"{method:<8} {micro:>5}  " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
