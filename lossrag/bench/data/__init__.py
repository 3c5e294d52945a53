"""Data sources and generators of the benchmark problems.

Every loader works offline. Real data comes from scikit-learn (digits), Debian's
``dataset-fashion-mnist`` and PyPI's ``qm9pack``; a missing source raises
:class:`MissingDataError` with the install command. Derived arrays are cached under
``$LOSSRAG_CACHE`` (default ``~/.cache/lossrag``).
"""

from lossrag.bench.data._source import MissingDataError
from lossrag.bench.data.cache import cache_dir, cached_arrays

__all__ = ["MissingDataError", "cache_dir", "cached_arrays"]
