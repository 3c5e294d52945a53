"""Benchmark summary metrics: Δm% against single-task learning, and mean rank over methods.

Δm% follows Maninis et al. (CVPR 2019) in the Nash-MTL / FAMO convention: the relative change of
every scored metric against the single-task (STL) baseline, sign-flipped where higher is better,
averaged over **all** metrics (not per task first) and given in percent. Lower is better; a negative
value beats STL.

>>> method, stl = {"acc": 0.9, "mae": 1.1}, {"acc": 1.0, "mae": 1.0}
>>> round(delta_m(method, stl, {"acc": True, "mae": False}), 6)
10.0
>>> mean_rank({"a": {"m": 1.0}, "b": {"m": 2.0}}, {"m": False})
{'a': 1.0, 'b': 2.0}
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["delta_m", "mean_rank"]


def _check_value(where: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: expected a float, found {type(value).__name__}.")
    if not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite value, found {value}.")
    return float(value)


def delta_m(
    method: Mapping[str, float],
    stl: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
) -> float:
    """Δm% of ``method`` against the single-task baseline ``stl``.

    ``Δm = 100/M · Σ_m (−1)^{δ_m} (M_method,m − M_STL,m) / M_STL,m`` over the M metrics of ``stl``,
    with ``δ_m = 1`` where ``higher_is_better[m]``.

    Args:
        method: Metric name -> value of the method being scored.
        stl: Metric name -> value of the STL baseline; its keys are the scored metrics. Values
            must be positive (they divide).
        higher_is_better: Metric name -> whether a larger value is better (accuracy, F1).

    Returns:
        Δm in percent; lower is better.

    Raises:
        ValueError: ``stl`` is empty, a metric is missing from ``method`` or ``higher_is_better``,
            a value is not finite, or a baseline value is not positive.
    """
    if not stl:
        raise ValueError("delta_m: `stl` is empty; expected at least one scored metric.")
    total = 0.0
    for name, base_value in stl.items():
        if name not in method:
            raise ValueError(
                f"delta_m: metric {name!r} of the STL baseline is missing from `method` "
                f"(it has {sorted(method)})."
            )
        if name not in higher_is_better:
            raise ValueError(f"delta_m: `higher_is_better` has no entry for metric {name!r}.")
        base = _check_value(f"delta_m: STL metric {name!r}", base_value)
        value = _check_value(f"delta_m: method metric {name!r}", method[name])
        if base <= 0:
            raise ValueError(
                f"delta_m: STL metric {name!r} must be positive to divide by, found {base}."
            )
        sign = -1.0 if higher_is_better[name] else 1.0
        total += sign * (value - base) / base
    return 100.0 * total / len(stl)


def _average_ranks(values: list[float]) -> list[float]:
    """1-based ranks of ``values`` (smallest first), ties given the average of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        stop = start
        while stop + 1 < len(order) and values[order[stop + 1]] == values[order[start]]:
            stop += 1
        for position in range(start, stop + 1):
            ranks[order[position]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


def mean_rank(
    table: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, bool],
) -> dict[str, float]:
    """Mean rank (MR) of each method over all metrics, as reported by Nash-MTL and FAMO.

    Every metric ranks the methods (1 = best, ties share the average of their ranks); a method's
    MR is the mean of its ranks over the metrics.

    Args:
        table: Method -> {metric -> value}. Every method must report every metric of
            ``higher_is_better``.
        higher_is_better: Metric -> whether a larger value is better; its keys are the metrics
            ranked.

    Returns:
        Method -> mean rank (lower is better).

    Raises:
        ValueError: ``table`` or ``higher_is_better`` is empty, a method lacks a metric, or a value
            is not finite.
    """
    if not table or not higher_is_better:
        raise ValueError("mean_rank: expected at least one method and one metric.")
    methods = list(table)
    totals = dict.fromkeys(methods, 0.0)
    for metric, higher in higher_is_better.items():
        values = []
        for method in methods:
            if metric not in table[method]:
                raise ValueError(f"mean_rank: method {method!r} has no value for {metric!r}.")
            value = _check_value(f"mean_rank: {method!r} / {metric!r}", table[method][metric])
            values.append(-value if higher else value)
        for method, rank in zip(methods, _average_ranks(values), strict=True):
            totals[method] += rank
    return {method: total / len(higher_is_better) for method, total in totals.items()}
