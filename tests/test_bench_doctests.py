"""The examples in the benchmark modules' docstrings run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "lossrag.bench.metrics",
    "lossrag.bench.problems",
    "lossrag.bench.problems.base",
    "lossrag.bench.problems.toy2d",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
