"""On/off gates that accumulate evidence: a bandit over each task's candidate losses.

Every retrieval measures a utility per candidate (its score against the task's natural loss).
The gates keep, per term, the number of its utilities and their running mean, and act on a
confidence bound with a prior spread ``s`` per utility: an inactive term comes on when
``mean − s/√n > margin`` after at least ``patience_on`` retrievals (strong evidence switches it
on early, weak evidence needs many retrievals); an active one goes off when ``mean + s/√n < 0``
after at least ``patience``, or after ``patience`` consecutive negative utilities (the
hysteresis of before, kept for noisy one-step utilities). The evidence of a term runs from its
first retrieval and is kept while it stays on or off; when it goes off, it starts over from one
utility, the worse of the one that switched it off and its mean, so that a term switched off by
a run of negative utilities while its mean is still high must earn its way back with new ones
(it came back on at the next retrieval before), and one switched off by its negative mean keeps
that. A candidate keeps its evidence while it is retrieved again (the policy
re-retrieves those with a positive mean)."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from typing import Any

from lossrag.keys import TermKey, nest, unnest

__all__ = ["Gates"]


def _updates(n: int) -> str:
    return f"{n} update" if n == 1 else f"{n} updates"


class Gates:
    """Per term: consecutive negative utilities (active terms) and the count and mean of its
    utilities since it was first retrieved or last switched off.

    Args:
        patience: Consecutive negative utilities before an active term goes off.
        patience_on: Fewest utilities before a term's bound can switch it (with ``spread``
            ``inf``: consecutive utilities above ``margin`` before an inactive term comes on).
        margin: How far above 0 an inactive term's bound must be.
        spread: Prior spread of one utility in the confidence bounds.

    >>> g = Gates(patience=2)
    >>> [g.update(TermKey("t", "l2"), -1.0, active=True)[0] for _ in range(2)]
    [True, False]
    """

    def __init__(
        self,
        patience: int = 3,
        patience_on: int = 2,
        margin: float = 0.0,
        spread: float = math.inf,
    ) -> None:
        if patience < 1 or patience_on < 1 or not spread > 0:
            raise ValueError(
                "Gates: patience and patience_on must be >= 1 and spread > 0, got "
                f"{patience}, {patience_on}, {spread}."
            )
        self.patience, self.patience_on, self.margin = patience, patience_on, margin
        self.spread = spread
        self.count: dict[TermKey, int] = {}
        #: term -> (utilities since it was first retrieved or last switched off, their mean)
        self.evidence: dict[TermKey, tuple[int, float]] = {}
        #: terms whose loss came out non-finite while on (:meth:`fail`): never on again
        self.failed: set[TermKey] = set()

    def fail(
        self, active: dict[str, list[str]], natural: dict[str, str], keys: Iterable[TermKey]
    ) -> dict[TermKey, str]:
        """Switch ``keys`` off for good (their loss came out non-finite); a task left with no
        term gets its ``natural`` loss back. Their notes."""
        notes = {}
        for key in keys:
            if key.loss in active[key.task]:
                active[key.task].remove(key.loss)
            self.failed.add(key)
            self.count.pop(key, None)
            self.evidence.pop(key, None)
            notes[key] = "off: its loss was not finite; not switched on again"
            if not active[key.task]:
                active[key.task].append(natural[key.task])
                notes[TermKey(key.task, natural[key.task])] = (
                    "on: floor (every other term of the task is off)"
                )
        return notes

    def update(self, key: TermKey, utility: float, active: bool) -> tuple[bool, str | None]:
        """Fold one utility in; return the term's new state and, if it changed, why."""
        n, mean = self.evidence.get(key, (0, 0.0))
        n, mean = n + 1, mean + (utility - mean) / (n + 1)
        bound = self.spread / math.sqrt(n)
        if active:
            run = self.count.get(key, 0) + 1 if utility < 0 else 0
            why = None
            if run >= self.patience:
                why = f"off: utility < 0 for {run} updates"
            elif n >= self.patience and mean + bound < 0:
                why = f"off: mean utility {mean:.2f} over {_updates(n)}, upper bound < 0"
            if why:  # its evidence starts over: the worse of this utility and its mean
                self.count[key], self.evidence[key] = 0, (1, min(utility, mean))
                return False, why
            self.evidence[key] = (n, mean)
            self.count[key] = run
            return True, None
        if math.isinf(self.spread):  # consecutive utilities above the margin
            run = self.count.get(key, 0) + 1 if utility > self.margin else 0
            on = run >= self.patience_on
            why = f"on: utility > {self.margin:g} for {run} updates" if on else None
        else:
            run = int(mean > 0)
            on = n >= self.patience_on and mean - bound > self.margin
            why = (
                f"on: mean utility {mean:.2f} over {_updates(n)}, lower bound > {self.margin:g}"
                if on
                else None
            )
        self.count[key], self.evidence[key] = (0 if on else run), (n, mean)
        return on, why

    def force(self, key: TermKey, on: bool) -> None:
        """A term switched from outside its utilities (:mod:`lossrag.policy.rescue`): its gate
        starts over as after a switch of its own, on (no run of negative utilities, no evidence
        against it) or off (one utility of at most 0: it earns its way back)."""
        self.count[key] = 0
        if on:
            self.evidence.pop(key, None)
        else:
            self.evidence[key] = (1, min(0.0, self.evidence.get(key, (0, 0.0))[1]))

    def held(self, key: TermKey, active: bool) -> str | None:
        """Why the term's gate, just updated, did not move (the rule it has not met yet; the
        numbers are the term's utility and evidence); ``None`` for an active term whose last
        utility was not negative."""
        n = self.evidence.get(key, (0, 0.0))[0]
        run = self.count.get(key, 0)
        if active:
            if run == 0:
                return None
            bound = (
                f"; mean + {self.spread:g}/√n ≥ 0"
                if n >= self.patience and math.isfinite(self.spread)
                else ""
            )
            return f"stays on: {run} of {self.patience} negative utilities in a row{bound}"
        if math.isinf(self.spread):
            return f"stays off: {run} of {self.patience_on} utilities > {self.margin:g} in a row"
        if n < self.patience_on:
            return f"stays off: {n} of {self.patience_on} utilities so far"
        return f"stays off: mean − {self.spread:g}/√n ≤ {self.margin:g}"

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
        back. Returns each term's note (why it changed, or why it did not, :meth:`held`) and
        whether any gate moved (a term switched or a counter towards a switch advanced)."""
        notes: dict[TermKey, str] = {}
        moved = False
        for key, utility in utilities:
            terms = active[key.task]
            is_on = key.loss in terms
            if key in self.failed:
                continue
            if not is_on and len(terms) >= max_terms:
                notes[key] = f"not counted: {len(terms)} terms of the task on (max_terms)"
                continue
            now_on, why = self.update(key, utility, is_on)
            moved |= now_on != is_on or self.count.get(key, 0) > 0
            if now_on and not is_on:
                terms.append(key.loss)
            elif not now_on and is_on:
                terms.remove(key.loss)
            note = why or self.held(key, now_on)
            if note:
                notes[key] = note
        for name, terms in active.items():
            if not terms:
                terms.append(natural[name])
                notes[TermKey(name, natural[name])] = (
                    "on: floor (every other term of the task is off)"
                )
        return notes, moved

    def state_dict(self) -> dict[str, Any]:
        """The counters and evidence, ``{task: {loss: value}}``."""
        return {
            "count": nest(self.count),
            "evidence": nest({k: list(v) for k, v in self.evidence.items()}),
            "failed": [list(k) for k in sorted(self.failed)],
        }

    def load_state_dict(self, state: dict[str, Any], tasks: Collection[str] = ()) -> None:
        """Restore :meth:`state_dict`, or an old one keyed by ``"task:loss"`` strings (split by
        :func:`lossrag.keys.parse_key` with the task names ``tasks``)."""
        self.count = {k: int(v) for k, v in unnest(state["count"], tasks).items()}
        self.evidence = {
            k: (int(v[0]), float(v[1])) for k, v in unnest(state.get("evidence", {}), tasks).items()
        }
        self.failed = {TermKey(str(t), str(loss)) for t, loss in state.get("failed", [])}
