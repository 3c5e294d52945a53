"""The retrieval policy (``policy="lossrag"``).

:mod:`~lossrag.policy.lossrag` orchestrates one idea per module: :mod:`~lossrag.policy.terms`
(a term's loss), :mod:`~lossrag.policy.retrieval` (candidates from the index, measured on the
model), :mod:`~lossrag.policy.scoring` (features, prior and correction),
:mod:`~lossrag.policy.gates`, :mod:`~lossrag.policy.schedule` (refresh and retrieval timing) and
:mod:`~lossrag.policy.weights`; the online learner of the correction is
:mod:`lossrag.meta.learner`.

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
