"""Δm% and mean rank against hand-computed values, plus their invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lossrag.bench.metrics import delta_m, mean_rank

positive = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)


def test_delta_m_hand_computed() -> None:
    # acc: -(0.72 - 0.80) / 0.80 = +0.10 ; mae: (3.0 - 2.0) / 2.0 = +0.50 ; mse: (0.9 - 1.0) = -0.10
    method = {"acc": 0.72, "mae": 3.0, "mse": 0.9}
    stl = {"acc": 0.80, "mae": 2.0, "mse": 1.0}
    hib = {"acc": True, "mae": False, "mse": False}
    assert delta_m(method, stl, hib) == pytest.approx(100 * (0.10 + 0.50 - 0.10) / 3)


def test_delta_m_averages_over_metrics_not_tasks() -> None:
    # Nash-MTL / FAMO convention: every metric counts once, e.g. 11 MAEs on QM9.
    stl = {f"m{i}": 1.0 for i in range(11)}
    method = dict(stl, m0=2.0)
    assert delta_m(method, stl, dict.fromkeys(stl, False)) == pytest.approx(100 / 11)


def test_delta_m_ignores_extra_method_metrics() -> None:
    assert delta_m({"a": 1.5, "junk": 9.0}, {"a": 1.0}, {"a": False}) == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("method", "stl", "hib", "message"),
    [
        ({}, {}, {}, "empty"),
        ({}, {"a": 1.0}, {"a": False}, "missing from `method`"),
        ({"a": 1.0}, {"a": 1.0}, {}, "no entry"),
        ({"a": 1.0}, {"a": 0.0}, {"a": False}, "positive"),
        ({"a": math.nan}, {"a": 1.0}, {"a": False}, "finite"),
    ],
)
def test_delta_m_errors(method: dict, stl: dict, hib: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        delta_m(method, stl, hib)


@given(st.dictionaries(st.sampled_from("abcdef"), st.tuples(positive, st.booleans()), min_size=1))
def test_delta_m_zero_against_itself(entries: dict[str, tuple[float, bool]]) -> None:
    values = {k: v for k, (v, _) in entries.items()}
    hib = {k: h for k, (_, h) in entries.items()}
    assert delta_m(values, values, hib) == pytest.approx(0.0, abs=1e-9)


@given(positive, positive, positive, st.booleans())
def test_delta_m_scale_invariant_and_signed(a: float, b: float, c: float, higher: bool) -> None:
    base = delta_m({"m": a}, {"m": b}, {"m": higher})
    assert delta_m({"m": a * c}, {"m": b * c}, {"m": higher}) == pytest.approx(base, rel=1e-9)
    assert delta_m({"m": a}, {"m": b}, {"m": not higher}) == pytest.approx(-base, rel=1e-9)


def test_mean_rank_hand_computed_with_ties() -> None:
    table = {
        "ew": {"acc": 0.70, "mae": 2.0},
        "uw": {"acc": 0.80, "mae": 2.0},
        "famo": {"acc": 0.75, "mae": 1.0},
    }
    hib = {"acc": True, "mae": False}
    # acc ranks: uw 1, famo 2, ew 3 ; mae ranks: famo 1, ew and uw tie at 2.5
    assert mean_rank(table, hib) == pytest.approx({"ew": 2.75, "uw": 1.75, "famo": 1.5})


def test_mean_rank_errors() -> None:
    with pytest.raises(ValueError, match="no value"):
        mean_rank({"a": {"x": 1.0}, "b": {}}, {"x": False})
    with pytest.raises(ValueError, match="at least one"):
        mean_rank({}, {"x": False})
    with pytest.raises(ValueError, match="finite"):
        mean_rank({"a": {"x": math.inf}}, {"x": False})


@given(
    st.lists(st.lists(positive, min_size=3, max_size=3), min_size=1, max_size=6),
    st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_mean_rank_invariants(columns: list[list[float]], hib_list: list[bool]) -> None:
    methods = ["a", "b", "c"]
    table = {m: {f"x{j}": col[i] for j, col in enumerate(columns)} for i, m in enumerate(methods)}
    hib = {f"x{j}": hib_list[j % 3] for j in range(len(columns))}
    ranks = mean_rank(table, hib)
    assert sum(ranks.values()) / len(ranks) == pytest.approx(2.0)  # (n + 1) / 2
    flipped = mean_rank(table, {k: not v for k, v in hib.items()})
    for m in methods:
        assert flipped[m] == pytest.approx(4.0 - ranks[m])  # n + 1 - rank
