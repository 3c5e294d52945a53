"""Meta-learning machinery: one-step look-ahead hypergradients of a query loss.

>>> from lossrag.meta import WAYS
>>> WAYS
('exact', 'per_term', 'jvp', 'central', 'forward')
"""

from lossrag.meta.hypergrad import WAYS, Functional, delayed_utilities, directional, hypergradients

__all__ = ["WAYS", "Functional", "delayed_utilities", "directional", "hypergradients"]
