"""Optional integrations with training frameworks; each module imports its framework itself.

- :mod:`lossrag.integrations.lightning`: :class:`~lossrag.integrations.lightning.LossRAGModule`,
  a ``lightning.LightningModule`` base (``pip install "lossrag[lightning]"``).
- :mod:`lossrag.integrations.huggingface`:
  :class:`~lossrag.integrations.huggingface.LossRAGTrainer`, a ``transformers.Trainer`` whose
  ``compute_loss`` weighs the tasks (``pip install "lossrag[huggingface]"``).

Importing :mod:`lossrag` or this package imports neither framework.
"""

from __future__ import annotations

__all__: list[str] = []
