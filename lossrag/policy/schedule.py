"""When the policy refreshes (context, scores, weights) and when a refresh also retrieves.

A refresh comes every ``refresh_every`` steps, weights held in between. Every
``retrieve_every``-th refresh retrieves (candidates measured on the model, gates updated); while
retrievals are quiet (no gate moved) the interval between them doubles, up to
``retrieve_every · retrieve_backoff`` refreshes, and a gate that moves resets it.

>>> s = Schedule(refresh_every=10, retrieve_every=1, retrieve_backoff=4)
>>> retrievals = []
>>> for step in range(0, 100, 10):
...     if s.start(step):
...         retrievals.append(step)
...         s.retrieved()
>>> retrievals  # no gate moves: the interval doubles, up to 4 refreshes
[0, 10, 30, 70]
"""

from __future__ import annotations

from typing import Any

__all__ = ["Schedule"]


class Schedule:
    """Refresh and retrieval timing with back-off (see the module docstring).

    Attributes:
        last_refresh: Step of the last refresh (``None`` before the first).
        refreshes: Refreshes so far.
        next_retrieval: Index of the refresh that retrieves next.
        retrieve_interval: Refreshes between the last retrieval and the next (0 before the
            first).
        gates_moved: Whether a gate moved since the last retrieval.
    """

    def __init__(self, refresh_every: int, retrieve_every: int, retrieve_backoff: int) -> None:
        self.refresh_every = refresh_every
        self.retrieve_every, self.retrieve_backoff = retrieve_every, retrieve_backoff
        self.last_refresh: int | None = None
        self.refreshes = 0
        self.next_retrieval, self.retrieve_interval, self.gates_moved = 0, 0, False

    def due(self, step: int) -> bool:
        """Whether this step refreshes the context, retrieval and scores."""
        return self.last_refresh is None or step - self.last_refresh >= self.refresh_every

    def start(self, step: int) -> bool:
        """Count a refresh at ``step``; whether it retrieves (then call :meth:`retrieved`)."""
        retrieve = self.refreshes >= self.next_retrieval
        self.last_refresh = step
        self.refreshes += 1
        return retrieve

    def retrieved(self) -> None:
        """Schedule the next retrieval after the one of the last refresh (its gates updated)."""
        quiet = not self.gates_moved and self.retrieve_interval > 0
        base = self.retrieve_every
        cap = base * self.retrieve_backoff
        self.retrieve_interval = min(2 * self.retrieve_interval, cap) if quiet else base
        self.next_retrieval = self.refreshes - 1 + self.retrieve_interval
        self.gates_moved = False

    def state_dict(self) -> dict[str, Any]:
        """``last_refresh``, ``refreshes`` and ``retrieval``: ``[next, interval, moved]``."""
        return {
            "last_refresh": self.last_refresh,
            "refreshes": self.refreshes,
            "retrieval": [self.next_retrieval, self.retrieve_interval, self.gates_moved],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a state from before the back-off: the fixed schedule's
        next retrieval)."""
        self.last_refresh = state["last_refresh"]
        self.refreshes = int(state["refreshes"])
        due = -(-self.refreshes // self.retrieve_every) * self.retrieve_every
        retrieval = state.get("retrieval", [due, self.retrieve_every, True])
        self.next_retrieval, self.retrieve_interval = int(retrieval[0]), int(retrieval[1])
        self.gates_moved = bool(retrieval[2])
