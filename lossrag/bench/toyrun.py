"""Run a weighting method on the ``toy2d`` problem.

The toy has closed-form gradients, so each start point gets its own method object (the same classes
``lossrag.wrap`` builds) fed with the objective values and gradients. Methods that take
gradients through autograd (GradNorm) see a linearised graph ``L_i + ⟨θ − θ₀, ∇f_i⟩`` whose value
and gradient at θ₀ are exact; FAMO receives the objectives after each step as its re-evaluation.
GradDrop and ConFIG produce directions that are not weighted sums and are not run here. The toy's
objectives are negative in places; FAMO gets their lower bounds (−2, −20) as its ``b_i``, as its
paper defines them (``log(L − b)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from lossrag.bench.problems import Toy2D, ToyRun
from lossrag.weighting import GradMethod, LossMethod, Method, make_method

__all__ = ["TOY_UNSUPPORTED", "run_toy"]

#: Lower bounds of the two toy objectives (their infima over the plane are −1.9989 and −19.989).
TOY_LOWER_BOUNDS = (-2.0, -20.0)

#: Methods whose update is not a weighted sum of the two gradients.
TOY_UNSUPPORTED = frozenset({"graddrop", "config"})


class _MethodRule:
    """A ``Toy2D`` rule backed by one method object per start point."""

    def __init__(self, name: str, starts: int, seed: int) -> None:
        if name in TOY_UNSUPPORTED:
            raise ValueError(f"toy2d: method {name!r} gives no per-task weights; it is not run.")
        self.thetas = [nn.Parameter(torch.zeros(2, dtype=torch.float64)) for _ in range(starts)]
        self.methods: list[Method] = []
        for theta in self.thetas:
            method = (
                make_method(name, min_losses=TOY_LOWER_BOUNDS)
                if name == "famo"
                else (make_method(name))
            )
            method.setup(2, [theta])
            self.methods.append(method)
        self.rng = torch.Generator().manual_seed(seed)
        self.started = False

    def __call__(self, losses: np.ndarray, grads: np.ndarray) -> np.ndarray:
        out = np.empty_like(losses)
        for i, method in enumerate(self.methods):
            value = torch.from_numpy(losses[i])
            jac = torch.from_numpy(grads[i])
            if method.needs_rerun and self.started:
                method.observe_rerun(value)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=self.rng)))
                out[i] = self._weights(method, self.thetas[i], value, jac)
        self.started = True
        return out

    @staticmethod
    def _weights(
        method: Method, theta: nn.Parameter, value: torch.Tensor, jac: torch.Tensor
    ) -> np.ndarray:
        if isinstance(method, LossMethod):
            linear = value + jac @ (theta - theta.detach())
            return method.weigh(linear).detach().numpy()
        assert isinstance(method, GradMethod)
        _, weights = method.aggregate(jac)
        assert weights is not None
        return weights.detach().numpy()


def run_toy(
    method: str, seed: int, steps: int | None = None, starts: Sequence[int] | None = None
) -> ToyRun:
    """Run ``method`` from the start points of :class:`Toy2D` (all five, or those indexed by
    ``starts``); ``steps`` overrides the protocol's 50k."""
    toy = Toy2D()
    if starts is not None:
        toy = Toy2D(starts=tuple(toy.starts[i] for i in starts))
    if steps is not None:
        toy = Toy2D(starts=toy.starts, steps=steps)
    return toy.run(_MethodRule(method, len(toy.starts), seed))
