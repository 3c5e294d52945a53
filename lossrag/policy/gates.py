"""On/off gates with hysteresis: a term goes off only after its utility stayed negative for
several updates, and comes back when it turns positive again (it keeps being scored)."""

from __future__ import annotations

from typing import Any

__all__ = ["Gates"]


class Gates:
    """Counters of consecutive negative (active terms) and positive (inactive terms) utilities.

    Args:
        patience: Consecutive negative utilities before an active term goes off.
        patience_on: Consecutive utilities above ``margin`` before an inactive term comes on.
        margin: How far above 0 an inactive term's utility must be to count.

    >>> g = Gates(patience=2)
    >>> [g.update("t", -1.0, active=True)[0] for _ in range(2)]
    [True, False]
    """

    def __init__(self, patience: int = 3, patience_on: int = 2, margin: float = 0.0) -> None:
        if patience < 1 or patience_on < 1:
            raise ValueError(
                f"Gates: patience and patience_on must be >= 1, got {patience}, {patience_on}."
            )
        self.patience, self.patience_on, self.margin = patience, patience_on, margin
        self.count: dict[str, int] = {}

    def update(self, key: str, utility: float, active: bool) -> tuple[bool, str | None]:
        """Fold one utility in; return the term's new state and, if it changed, why."""
        if active:
            n = self.count.get(key, 0) + 1 if utility < 0 else 0
            if n >= self.patience:
                self.count[key] = 0
                return False, f"off: utility < 0 for {n} updates"
        else:
            n = self.count.get(key, 0) + 1 if utility > self.margin else 0
            if n >= self.patience_on:
                self.count[key] = 0
                return True, f"on: utility > {self.margin:g} for {n} updates"
        self.count[key] = n
        return active, None

    def state_dict(self) -> dict[str, Any]:
        """The counters."""
        return {"count": dict(self.count)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.count = {k: int(v) for k, v in state["count"].items()}
