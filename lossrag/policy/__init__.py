"""The retrieval policy (``policy="lossrag"``): prior, learned correction, gates.

>>> from lossrag.policy import LossRAG
>>> LossRAG(refresh_every=20).refresh_every
20
"""

from lossrag.policy.gates import Gates
from lossrag.policy.lossrag import FEATURES, LossRAG, LossRAGOnline
from lossrag.policy.net import Correction
from lossrag.policy.prior import Prior
from lossrag.policy.store import DefaultPolicy, DefaultPolicyOnline, load_policy, save_policy

__all__ = [
    "FEATURES",
    "Correction",
    "DefaultPolicy",
    "DefaultPolicyOnline",
    "Gates",
    "LossRAG",
    "LossRAGOnline",
    "Prior",
    "load_policy",
    "save_policy",
]
