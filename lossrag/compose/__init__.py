"""``lossrag.wrap`` and the :class:`Composer`.

- :mod:`~lossrag.compose.api`: ``wrap``, with its options defined once
  (:class:`~lossrag.compose.options.Options`);
- :mod:`~lossrag.compose.composer`: the composer (windows, records, state, hooks);
- :mod:`~lossrag.compose.steps`: one step strategy per method family;
- :mod:`~lossrag.compose.checks`: checks of tasks, ``shared`` and batches;
- :mod:`~lossrag.compose.lookahead`: the composer's own forwards (FAMO's re-evaluation, the
  query baselines' look-ahead);
- :mod:`~lossrag.compose.dist`: agreement across DDP ranks;
- :mod:`~lossrag.compose.records`: step records, built in one place.
"""

from lossrag.compose.api import wrap
from lossrag.compose.composer import Composer, NonFiniteLossError
from lossrag.compose.options import Options

__all__ = ["Composer", "NonFiniteLossError", "Options", "wrap"]
