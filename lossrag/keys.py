"""Term keys: a (task, loss) pair as a typed tuple, and its plain-container form in state dicts.

A term's key used to be the string ``"task:loss"``, which a task or loss id containing ``:``
made ambiguous. :class:`TermKey` keeps the two apart; state dicts store a ``{TermKey: value}``
mapping as ``{task: {loss: value}}`` (:func:`nest`), and :func:`unnest` still reads the old flat
``{"task:loss": value}`` form of checkpoints written before.

>>> key = TermKey("a:x", "huber(delta=0.5)")
>>> nest({key: 1.0})
{'a:x': {'huber(delta=0.5)': 1.0}}
>>> unnest({"a:x:l2": 2.0}, tasks=["a:x", "b"])
{TermKey(task='a:x', loss='l2'): 2.0}
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, NamedTuple, TypeVar

__all__ = ["TermKey", "nest", "parse_key", "unnest"]

V = TypeVar("V")


class TermKey(NamedTuple):
    """One term: the task's name and the loss library entry id (``huber(delta=0.5)``)."""

    task: str
    loss: str


def parse_key(text: str, tasks: Collection[str] = ()) -> TermKey:
    """The key of an old ``"task:loss"`` string: its task is the longest of ``tasks`` it starts
    with (followed by ``:``); without one, the text before the last ``:`` (the old reading)."""
    known = [t for t in tasks if text.startswith(f"{t}:")]
    if known:
        task = max(known, key=len)
        return TermKey(task, text[len(task) + 1 :])
    task, sep, loss = text.rpartition(":")
    if not sep:
        raise ValueError(f"Term key {text!r}: expected 'task:loss'.")
    return TermKey(task, loss)


def nest(values: Mapping[TermKey, V]) -> dict[str, dict[str, V]]:
    """``{task: {loss: value}}``: a mapping by term key as plain containers."""
    out: dict[str, dict[str, V]] = {}
    for key, value in values.items():
        out.setdefault(key.task, {})[key.loss] = value
    return out


def unnest(state: Mapping[str, Any], tasks: Collection[str] = ()) -> dict[TermKey, Any]:
    """Invert :func:`nest`; an old flat ``{"task:loss": value}`` mapping is read with
    :func:`parse_key` (``tasks`` the known task names)."""
    out: dict[TermKey, Any] = {}
    for task, value in state.items():
        if isinstance(value, Mapping):
            out.update({TermKey(task, loss): v for loss, v in value.items()})
        else:
            out[parse_key(task, tasks)] = value
    return out
