"""Benchmark problems: typed, registered definitions with data, model, budget and metrics.

>>> from lossrag.bench.problems import get_problem, list_problems
>>> "digits-mtl" in list_problems()
True
>>> p = get_problem("digits-mtl", budget={"epochs": 2})
>>> p.scored
['digit', 'parity', 'has_loop', 'denoise']
>>> splits = p.load(seed=0)
>>> model = p.build_model(seed=0)
>>> sorted(p.evaluate(model, splits.test))
['denoise', 'digit', 'has_loop', 'parity']

``toy2d`` is not an MLP problem and is not in the registry; use :class:`Toy2D`.
"""

from typing import Annotated

from pydantic import Field

from lossrag.bench.problems.base import (
    Batch,
    Budget,
    LossChoice,
    Problem,
    ProblemCard,
    ProblemRegistry,
    Sampler,
    Split,
    Splits,
    get_problem,
    list_problems,
    problem_card,
    register_problem,
    registry,
)
from lossrag.bench.problems.digits import DigitsProblem
from lossrag.bench.problems.fashion import MultiFashionProblem
from lossrag.bench.problems.gradnorm import GradNormSynthProblem
from lossrag.bench.problems.manyclass import ManyClassProblem
from lossrag.bench.problems.mnist1d import MNIST1DProblem
from lossrag.bench.problems.offsetscale import OffsetScaleProblem
from lossrag.bench.problems.qm9 import QM9Problem
from lossrag.bench.problems.toy2d import START_POINTS, Toy2D, ToyRule, ToyRun

#: A built-in problem config, discriminated by ``family`` (for config files).
ProblemConfig = Annotated[
    DigitsProblem
    | MNIST1DProblem
    | MultiFashionProblem
    | QM9Problem
    | GradNormSynthProblem
    | OffsetScaleProblem
    | ManyClassProblem,
    Field(discriminator="family"),
]

__all__ = [
    "START_POINTS",
    "Batch",
    "Budget",
    "DigitsProblem",
    "GradNormSynthProblem",
    "LossChoice",
    "MNIST1DProblem",
    "ManyClassProblem",
    "MultiFashionProblem",
    "OffsetScaleProblem",
    "Problem",
    "ProblemCard",
    "ProblemConfig",
    "ProblemRegistry",
    "QM9Problem",
    "Sampler",
    "Split",
    "Splits",
    "Toy2D",
    "ToyRule",
    "ToyRun",
    "get_problem",
    "list_problems",
    "problem_card",
    "register_problem",
    "registry",
]
