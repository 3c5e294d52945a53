"""The LossRAG benchmark suite: problems, data loaders and summary metrics (Δm%, mean rank).

See ``BENCHMARKS.md`` for the protocol. Problems: :func:`get_problem` / :func:`list_problems`;
the two-objective toy: :class:`Toy2D`; metrics: :func:`delta_m`, :func:`mean_rank`.
"""

from lossrag.bench.metrics import delta_m, mean_rank
from lossrag.bench.problems import (
    Budget,
    Problem,
    Split,
    Splits,
    Toy2D,
    get_problem,
    list_problems,
    register_problem,
)

__all__ = [
    "Budget",
    "Problem",
    "Split",
    "Splits",
    "Toy2D",
    "delta_m",
    "get_problem",
    "list_problems",
    "mean_rank",
    "register_problem",
]
