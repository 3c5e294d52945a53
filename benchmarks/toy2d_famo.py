"""Why FAMO and UW stalled on ``toy2d``, measured; and the EW / FAMO / UW trajectory figure.

    python benchmarks/toy2d_famo.py  [--out benchmarks/toy2d]  [--plot-only]

1. Ablations with independent numpy re-implementations of FAMO (Algorithm 1 of Liu et al. 2023)
   and UW (Kendall et al. 2018) on the toy (50k Adam steps, lr 1e-3, five starts): FAMO's logit
   weight decay γ, its loss bounds b, fixed logits; UW's learning rate and shifted losses; fixed
   weights on one objective.
2. The wrapped methods (``run_toy``'s rules) against those references, fed the same losses, in
   float64: the largest weight difference over 1000 steps.
3. The figure ``toy2d_ew_famo_uw.png`` from the benchmark's runs (``runs/``) and the FAMO runs made
   before the fix (``famo_before.json``): trajectories, and the distance to the Pareto set over
   the steps.

Numbers go to ``famo_uw.json``. FAMO's toy settings come from its authors' code
(``Cranial-XIX/FAMO``: ``experiments/toy/trainer.py`` sets the bounds ``(−21·scale, −21)``,
``run.sh`` sets γ = 0, "as the objective is not changing").
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from lossrag._util import atomic_write_text
from lossrag.bench.problems import Toy2D
from lossrag.bench.toyrun import _MethodRule

PAPER_BOUNDS = (-2.1, -21.0)
OLD = {"min_losses": (-2.0, -20.0), "weight_decay": 1e-3}  # the benchmark's FAMO before the fix


class Adam:
    """torch-style Adam (β = 0.9, 0.999, ε = 1e-8); weight decay is added to ``g`` by the caller."""

    def __init__(self, shape: tuple[int, int], lr: float) -> None:
        self.lr, self.t, self.m, self.v = lr, 0, np.zeros(shape), np.zeros(shape)

    def step(self, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.999 * self.v + 0.001 * g * g
        m_hat = self.m / (1 - 0.9**self.t)
        return p - self.lr * m_hat / (np.sqrt(self.v / (1 - 0.999**self.t)) + 1e-8)


class Famo:
    """FAMO, Algorithm 1: weights ``c·z_i/(L_i − b_i)``, ``z = softmax(ξ)``; after each step an
    Adam step (lr ``lr``) on ``ξ`` along ``J_softmax(ξ)ᵀ δ + γξ``, ``δ`` the log-loss decrease."""

    def __init__(self, rows: int, bounds: tuple[float, float], gamma: float, lr: float = 0.025):
        self.b, self.gamma = np.asarray(bounds), gamma
        self.xi, self.adam = np.zeros((rows, 2)), Adam((rows, 2), lr)
        self.before: np.ndarray | None = None
        self.logit_grad: list[np.ndarray] = []  # |∂/∂ξ_1| per step, without the decay

    def __call__(self, losses: np.ndarray, grads: np.ndarray) -> np.ndarray:
        if self.before is not None:
            delta = np.log(self.before - self.b + 1e-8) - np.log(losses - self.b + 1e-8)
            z = self.z()
            g = z * (delta - (z * delta).sum(1, keepdims=True))
            self.logit_grad.append(np.abs(g[:, 0]))
            self.xi = self.adam.step(self.xi, g + self.gamma * self.xi)
        self.before = losses
        w = self.z() / (losses - self.b + 1e-8)
        return w / w.sum(1, keepdims=True)

    def z(self) -> np.ndarray:
        e = np.exp(self.xi - self.xi.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


class Uw:
    """UW: ``Σ ½e^{−s_i}(L_i − shift_i) + ½s_i``; weights ``½e^{−s_i}``, ``s`` stepped by Adam."""

    def __init__(self, rows: int, lr: float, shift: tuple[float, float] = (0.0, 0.0)) -> None:
        self.s, self.adam, self.shift = np.zeros((rows, 2)), Adam((rows, 2), lr), np.array(shift)

    def __call__(self, losses: np.ndarray, grads: np.ndarray) -> np.ndarray:
        w = 0.5 * np.exp(-self.s)
        self.s = self.adam.step(self.s, 0.5 - w * (losses - self.shift))
        return w


def fixed(weights: tuple[float, float]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    return lambda losses, grads: np.tile(weights, (len(losses), 1))


def _distances(rule: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> list[float]:
    with np.errstate(over="ignore", invalid="ignore"):
        run = Toy2D(record_every=50000).run(rule)
    return [round(float(d), 4) for d in run.pareto_distance]


def ablations() -> dict[str, Any]:
    """Final distances to the Pareto set per start point under each variant."""
    out: dict[str, Any] = {}
    for gamma in (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2):
        out[f"famo b={PAPER_BOUNDS} gamma={gamma:g}"] = _distances(Famo(5, PAPER_BOUNDS, gamma))
    for bounds in ((-2.0, -20.0), (-3.0, -30.0)):
        for gamma in (0.0, 1e-3):
            out[f"famo b={bounds} gamma={gamma:g}"] = _distances(Famo(5, bounds, gamma))
    out["famo fixed logits (lr 0): weights 1/(L-b)"] = _distances(Famo(5, PAPER_BOUNDS, 0.0, 0.0))
    for gamma in (0.0, 1e-3):
        famo = Famo(5, PAPER_BOUNDS, gamma)
        _distances(famo)
        grad = np.median(np.array(famo.logit_grad[1000:]), axis=0)
        out[f"famo gamma={gamma:g}: median |dxi_1| per step, final |xi_1|"] = [
            [float(f"{g:.2e}") for g in grad],
            [round(float(x), 3) for x in np.abs(famo.xi[:, 0])],
        ]
    out["uw lr 1e-3"] = _distances(Uw(5, 1e-3))
    out["uw lr 0.025 (FAMO/Nash-MTL code's method-parameter lr)"] = _distances(Uw(5, 0.025))
    out["uw lr 1e-3 on L - b (positive losses)"] = _distances(Uw(5, 1e-3, PAPER_BOUNDS))
    for w in ((1.0, 0.0), (0.0, 1.0), (100.0, 1.0), (1.0, 100.0)):
        out[f"fixed weights {w}"] = _distances(fixed(w))
    return out


def wrapper_gaps(steps: int = 1000) -> dict[str, float]:
    """Largest |Δ weight| between ``run_toy``'s rule and the reference, fed the same losses."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # torchjd's logits and log-variances in float64
    cases: dict[str, tuple[str, dict[str, Any] | None, Callable[[np.ndarray, np.ndarray], Any]]] = {
        "famo (toy settings)": ("famo", None, Famo(5, PAPER_BOUNDS, 0.0)),
        "famo (before: b=(-2,-20), gamma=1e-3)": ("famo", OLD, Famo(5, (-2.0, -20.0), 1e-3)),
        "uw": ("uw", None, Uw(5, 1e-3)),
    }
    out = {}
    try:
        for label, (name, options, ref) in cases.items():
            wrapped, gap = _MethodRule(name, 5, 0, options), [0.0]

            def both(losses: np.ndarray, grads: np.ndarray) -> np.ndarray:
                w_ref = ref(losses, grads)  # noqa: B023
                gap.append(float(np.abs(wrapped(losses, grads) - w_ref).max()))  # noqa: B023
                return np.asarray(w_ref)

            Toy2D(steps=steps, record_every=steps).run(both)
            out[label] = float(f"{max(gap):.1e}")
    finally:
        torch.set_default_dtype(previous)
    return out


def _runs(folder: Path, method: str) -> list[dict[str, Any]]:
    return [
        json.loads((folder / f"toy__toy2d__{method}__s0__p{p}.json").read_text()) for p in range(5)
    ]


def figure(out: Path) -> dict[str, list[float]]:
    """Trajectories and distance-over-steps panels; returns the final distances per panel."""
    before = json.loads((out / "famo_before.json").read_text())["runs"]
    panels = {
        "EW": _runs(out / "runs", "ew"),
        "FAMO (authors' toy settings:\nb = (−2.1, −21), γ = 0)": _runs(out / "runs", "famo"),
        "FAMO before (b = (−2, −20),\nγ = 1e-3, library default)": [
            before[str(p)] for p in range(5)
        ],
        "UW (Kendall et al., s by Adam 1e-3)": _runs(out / "runs", "uw"),
    }
    toy = Toy2D()
    fig, axes = plt.subplots(2, 4, figsize=(17, 8.5), gridspec_kw={"height_ratios": [1.25, 1]})
    colors = [plt.get_cmap("tab10")(i) for i in range(5)]
    finals: dict[str, list[float]] = {}
    for col, (title, runs) in enumerate(panels.items()):
        top, bottom = axes[0, col], axes[1, col]
        top.plot(*toy.pareto.T, color="black", lw=3, label="Pareto set")
        finals[title.split("\n")[0]] = []
        for p, run in enumerate(runs):
            traj = np.asarray(run["trajectory"][0])
            dist = toy.pareto_distance(traj)
            final = float(run["pareto_distance"][0])
            finals[title.split("\n")[0]].append(round(final, 4))
            label = f"start {tuple(toy.starts[p])}: {final:.3f}"
            top.plot(*traj.T, color=colors[p], lw=1.6)
            top.plot(*traj[0], "o", color=colors[p], ms=6)
            top.plot(*traj[-1], "x" if final > 0.05 else "*", color=colors[p], ms=10, mew=2)
            steps = np.linspace(0, 50, len(dist))
            bottom.semilogy(steps, np.maximum(dist, 1e-5), color=colors[p], label=label)
        stalled = sum(d > 0.05 for d in finals[title.split("\n")[0]])
        top.set_title(f"{title}\n{stalled} of 5 starts stall", fontsize=11)
        top.set(xlim=(-10, 10), ylim=(-10, 10), aspect="equal", xlabel="x1", ylabel="x2")
        top.legend(fontsize=8, loc="lower left")
        bottom.axhline(0.05, color="gray", ls="--", lw=1)
        bottom.set(ylim=(1e-11, 100), xlabel="Adam step (thousands)")
        bottom.set_ylabel("distance to the Pareto set (floor 1e-5)")
        bottom.legend(fontsize=7.5, loc="lower right", title="final distance", title_fontsize=7.5)
    fig.suptitle(
        "toy2d (CAGrad toy, f1 × 0.1): 50k Adam steps, lr 1e-3, from the five standard starts "
        "(o start, * reached, x stalled; dashed: 0.05)",
        fontsize=12,
    )
    fig.tight_layout()
    target = out / "toy2d_ew_famo_uw.png"
    fig.savefig(target.with_suffix(".tmp.png"), dpi=90)
    target.with_suffix(".tmp.png").replace(target)
    plt.close(fig)
    return finals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/toy2d"))
    parser.add_argument("--plot-only", action="store_true", help="skip the ablations")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result: dict[str, Any] = {"final_distance_per_start": figure(args.out)}
    print(json.dumps(result, indent=1), flush=True)
    if not args.plot_only:
        result["wrapper_vs_reference_max_weight_gap_1000_steps_float64"] = wrapper_gaps()
        print(json.dumps(result["wrapper_vs_reference_max_weight_gap_1000_steps_float64"]))
        result["reference_ablations_final_distance_per_start"] = ablations()
        atomic_write_text(args.out / "famo_uw.json", json.dumps(result, indent=1))
        print(json.dumps(result["reference_ablations_final_distance_per_start"], indent=1))


if __name__ == "__main__":
    main()
