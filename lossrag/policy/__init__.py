"""The retrieval policy (``policy="lossrag"``): prior, learned correction, gates.

>>> from lossrag.policy import LossRAG
>>> LossRAG(refresh_every=20).refresh_every
20
"""

from lossrag.policy.gates import Gates
from lossrag.policy.lossrag import FEATURES, LossRAG, LossRAGOnline
from lossrag.policy.net import Correction
from lossrag.policy.prior import Prior

__all__ = ["FEATURES", "Correction", "Gates", "LossRAG", "LossRAGOnline", "Prior"]
