"""On/off gates with hysteresis: a term goes off only after its utility stayed negative for
several updates, and comes back when it turns positive again (it keeps being scored)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from lossrag.keys import TermKey, nest, unnest

__all__ = ["Gates"]


class Gates:
    """Counters of consecutive negative (active terms) and positive (inactive terms) utilities.

    Args:
        patience: Consecutive negative utilities before an active term goes off.
        patience_on: Consecutive utilities above ``margin`` before an inactive term comes on.
        margin: How far above 0 an inactive term's utility must be to count.

    >>> g = Gates(patience=2)
    >>> [g.update(TermKey("t", "l2"), -1.0, active=True)[0] for _ in range(2)]
    [True, False]
    """

    def __init__(self, patience: int = 3, patience_on: int = 2, margin: float = 0.0) -> None:
        if patience < 1 or patience_on < 1:
            raise ValueError(
                f"Gates: patience and patience_on must be >= 1, got {patience}, {patience_on}."
            )
        self.patience, self.patience_on, self.margin = patience, patience_on, margin
        self.count: dict[TermKey, int] = {}

    def update(self, key: TermKey, utility: float, active: bool) -> tuple[bool, str | None]:
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

    def apply(
        self,
        active: dict[str, list[str]],
        natural: dict[str, str],
        utilities: Iterable[tuple[TermKey, float]],
        max_terms: int,
    ) -> tuple[dict[TermKey, str], bool]:
        """Switch the terms of ``active`` (task -> entry ids, changed in place) from
        ``(term, utility)`` pairs, at most ``max_terms`` per task (a candidate without room is
        not counted towards switching on); a task left with no term gets its ``natural`` loss
        back. Returns each changed term's note and whether any gate moved (a term switched or a
        counter towards a switch advanced)."""
        notes: dict[TermKey, str] = {}
        moved = False
        for key, utility in utilities:
            terms = active[key.task]
            is_on = key.loss in terms
            if not is_on and len(terms) >= max_terms:
                continue
            now_on, why = self.update(key, utility, is_on)
            moved |= now_on != is_on or self.count.get(key, 0) > 0
            if now_on and not is_on:
                terms.append(key.loss)
            elif not now_on and is_on:
                terms.remove(key.loss)
            if why:
                notes[key] = why
        for name, terms in active.items():
            if not terms:
                terms.append(natural[name])
                notes[TermKey(name, natural[name])] = (
                    "on: floor (every other term of the task is off)"
                )
        return notes, moved

    def state_dict(self) -> dict[str, Any]:
        """The counters, ``{task: {loss: count}}``."""
        return {"count": nest(self.count)}

    def load_state_dict(self, state: dict[str, Any], tasks: Collection[str] = ()) -> None:
        """Restore :meth:`state_dict`, or an old one keyed by ``"task:loss"`` strings (split by
        :func:`lossrag.keys.parse_key` with the task names ``tasks``)."""
        self.count = {k: int(v) for k, v in unnest(state["count"], tasks).items()}
