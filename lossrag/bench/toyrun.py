"""Run a weighting method on the ``toy2d`` problem.

The toy has closed-form gradients, so each start point gets its own method object (the same classes
``lossrag.wrap`` builds) fed with the objective values and gradients. Methods that take
gradients through autograd (GradNorm) see a linearised graph ``L_i + ⟨θ − θ₀, ∇f_i⟩`` whose value
and gradient at θ₀ are exact; FAMO receives the objectives after each step as its re-evaluation.
Not run here (:data:`TOY_UNSUPPORTED`): GradDrop, ConFIG and DB-MTL, whose directions are not
weighted sums of this step's two gradients (DB-MTL's sums EMAs over past steps); GLS, GO4Align and
DB-MTL, which take the logarithm of each loss, while the toy's objectives go below 0 and only FAMO
takes lower bounds; and the retrieval policies, which compose their loss terms from a task's
outputs and targets (the toy has two objective values, no outputs).

FAMO runs as its authors ran this toy (``Cranial-XIX/FAMO``, ``experiments/toy/trainer.py`` and
``run.sh``): bounds ``b = (−21·0.1, −21)`` below the objectives, which are negative in places
(FAMO works on ``log(L − b)``), and no weight decay on its logits (γ = 0, where the library's
default is 1e-3). With γ = 1e-3 the decay outweighs the logits' gradient, which is tiny on the
toy (median 5·10⁻⁵ a step), the logits stay near 0 and FAMO, left with fixed 1/(L − b) weights,
stalls from two start points (``benchmarks/toy2d_famo.py`` measures it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lossrag.bench.problems import Toy2D, ToyRun
from lossrag.weighting import GradMethod, LossMethod, Method, make_method

__all__ = ["TOY_OPTIONS", "TOY_UNSUPPORTED", "run_toy"]

#: Options each method runs with on the toy, where they differ from its defaults: FAMO's toy
#: settings from its authors' code (lower bounds −21·scale and −21 below the objectives' infima
#: −1.9989 and −19.989; logit weight decay γ = 0).
TOY_OPTIONS: dict[str, dict[str, Any]] = {
    "famo": {"min_losses": (-2.1, -21.0), "weight_decay": 0.0},
}

_NEGATIVE = "it takes the logarithm of each loss, and the toy's objectives go below 0"

#: Methods the toy cannot run, with the reason: an update that is not a weighted sum of this step's
#: two gradients, the logarithm of losses that go negative, or loss terms composed from a task's
#: outputs and targets.
TOY_UNSUPPORTED: dict[str, str] = {
    "graddrop": "its direction is not a weighted sum of the two gradients",
    "config": "its direction is not a weighted sum of the two gradients",
    "dbmtl": f"{_NEGATIVE}; its direction sums EMAs of the gradients, not this step's two",
    "geometricmean": _NEGATIVE,
    "go4align": _NEGATIVE,
    **dict.fromkeys(
        ("lossrag", "lossrag-online", "lossrag-default", "lossrag-default-online"),
        "it composes loss terms from a task's outputs and targets; the toy has two values",
    ),
}


class _MethodRule:
    """A ``Toy2D`` rule backed by one method object per start point."""

    def __init__(
        self, name: str, starts: int, seed: int, options: Mapping[str, Any] | None = None
    ) -> None:
        if name in TOY_UNSUPPORTED:
            raise ValueError(f"toy2d: method {name!r} is not run: {TOY_UNSUPPORTED[name]}.")
        chosen = dict(TOY_OPTIONS.get(name, {}) if options is None else options)
        self.thetas = [nn.Parameter(torch.zeros(2, dtype=torch.float64)) for _ in range(starts)]
        self.methods: list[Method] = []
        for theta in self.thetas:
            method = make_method(name, **chosen)
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
    method: str,
    seed: int,
    steps: int | None = None,
    starts: Sequence[int] | None = None,
    options: Mapping[str, Any] | None = None,
) -> ToyRun:
    """Run ``method`` from the start points of :class:`Toy2D` (all five, or those indexed by
    ``starts``); ``steps`` overrides the protocol's 50k; ``options`` replaces the method's
    :data:`TOY_OPTIONS` (for ablations)."""
    toy = Toy2D()
    if starts is not None:
        toy = Toy2D(starts=tuple(toy.starts[i] for i in starts))
    if steps is not None:
        toy = Toy2D(starts=toy.starts, steps=steps)
    return toy.run(_MethodRule(method, len(toy.starts), seed, options))
