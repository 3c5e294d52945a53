"""`lossrag bench` has no ``meta_every`` option: with this folder on ``PYTHONPATH``, every ``fit``
with a query stream adapts online every 10 steps instead of 5 (``benchmarks/online/README.md``)."""

from typing import Any

import lossrag.bench.fit as _fit

_orig = _fit.wrap


def _wrap(*args: Any, **kwargs: Any) -> Any:
    if kwargs.get("query") is not None:
        kwargs["meta_every"] = 10
    return _orig(*args, **kwargs)


_fit.wrap = _wrap
