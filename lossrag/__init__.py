"""LossRAG: retrieval-composed loss weighting for multi-task learning in PyTorch.

>>> import lossrag
>>> lossrag.Task("shift", kind="regression").metric
'mae'
"""

from lossrag.compose import Composer, NonFiniteLossError, wrap
from lossrag.losses import Loss, LossSpec, registry
from lossrag.record import StepRecord, Term, read_trace
from lossrag.tasks import Task

__version__ = "0.1.0"

__all__ = [
    "Composer",
    "Loss",
    "LossSpec",
    "NonFiniteLossError",
    "StepRecord",
    "Task",
    "Term",
    "__version__",
    "read_trace",
    "registry",
    "wrap",
]
