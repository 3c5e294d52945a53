"""Loss embeddings from gradient statistics (family, shape signature, probe statistics).

>>> from lossrag.embed import Embedder, RAW_DIM
>>> Embedder().canonical("huber", {"delta": 0.5}, "regression").shape == (RAW_DIM,)
True
"""

from lossrag.embed.library import EMBED_VERSION, RAW_DIM, Embedder, Normaliser, variant_id
from lossrag.embed.probe import DIFFICULTY, Probe, canonical_probe, probe_loss
from lossrag.embed.stats import PROBE_STATS, SIGNATURE, probe_statistics, signature

__all__ = [
    "DIFFICULTY",
    "EMBED_VERSION",
    "PROBE_STATS",
    "RAW_DIM",
    "SIGNATURE",
    "Embedder",
    "Normaliser",
    "Probe",
    "canonical_probe",
    "probe_loss",
    "probe_statistics",
    "signature",
    "variant_id",
]
