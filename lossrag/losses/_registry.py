"""The loss registry: ``@register`` functions in code, cards in ``library/``, checked together."""

from __future__ import annotations

import builtins
import fnmatch
import inspect
import math
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from torch import Tensor

from lossrag._util import data_dir, unknown_name_error
from lossrag.losses.module import Loss
from lossrag.losses.spec import LossSpec
from lossrag.tasks import KINDS

__all__ = ["LossFn", "LossRegistry", "register", "registry"]

#: A pure loss ``fn(output, target, **hyper_params) -> Tensor`` without reduction.
LossFn = Callable[..., Tensor]
_F = TypeVar("_F", bound=LossFn)

#: An entry id: ``name`` or ``name(k=v, ...)`` (the format of :func:`lossrag.embed.variant_id`).
_ID = re.compile(r"\s*([A-Za-z_][\w.-]*)\s*(?:\((.*)\))?\s*", re.DOTALL)


class LossRegistry:
    """Loss functions registered by name, each paired with its card from a folder of TOML files.

    Cards are read at first use. Every registered function must have a card and every card a
    function; the function's keyword-only hyper-parameters and their defaults must match the card.
    A mismatch or a corrupt card is a ValueError naming the file.

    Args:
        cards: Folder of ``<name>.toml`` cards; ``None`` for the library shipped with LossRAG.
    """

    def __init__(self, cards: Path | None = None) -> None:
        self._cards = cards
        self._functions: dict[str, LossFn] = {}
        self._specs: dict[str, LossSpec] | None = None
        self._lock = threading.Lock()

    def register(self, name: str) -> Callable[[_F], _F]:
        """Decorator registering a loss function under ``name`` (its card is ``<name>.toml``)."""

        def decorate(fn: _F) -> _F:
            with self._lock:
                if name in self._functions:
                    raise ValueError(f"Loss {name!r} is registered twice.")
                self._functions[name] = fn
                self._specs = None  # re-read and re-check the cards at next use
            return fn

        return decorate

    @property
    def folder(self) -> Path:
        """The folder the cards are read from."""
        return self._cards if self._cards is not None else data_dir("library")

    def _loaded(self) -> dict[str, LossSpec]:
        specs = self._specs
        if specs is None:
            with self._lock:
                if self._specs is None:
                    self._specs = self._load()
                specs = self._specs
        return specs

    def _load(self) -> dict[str, LossSpec]:
        folder = self.folder
        specs: dict[str, LossSpec] = {}
        for path in sorted(folder.glob("*.toml")):
            spec = LossSpec.from_toml(path)
            if spec.name != path.stem:
                raise ValueError(
                    f"Loss card {path} names the loss {spec.name!r}; expected {path.stem!r}."
                )
            if spec.name not in self._functions:
                raise ValueError(f"Loss card {path} has no registered function {spec.name!r}.")
            _check_signature(path, spec, self._functions[spec.name])
            specs[spec.name] = spec
        missing = sorted(set(self._functions) - set(specs))
        if missing:
            raise ValueError(
                f"Registered losses {', '.join(missing)} have no card in {folder} "
                f"(expected {', '.join(m + '.toml' for m in missing)})."
            )
        return specs

    @staticmethod
    def parse_id(entry_id: str) -> tuple[str, dict[str, float]]:
        """Split a library entry id (``huber(delta=0.5)``, or a bare name ``l2``) into the loss
        name and its hyper-parameters; the inverse of :func:`lossrag.embed.variant_id`.

        Only the syntax is checked here (a malformed id is a ValueError showing the expected
        form); whether the name and parameters exist is checked by :meth:`spec`.

        >>> LossRegistry.parse_id("huber(delta=0.5)")
        ('huber', {'delta': 0.5})
        """
        match = _ID.fullmatch(str(entry_id))
        if match is None:
            raise ValueError(
                f"Loss id {entry_id!r} is malformed; expected 'name' or 'name(key=value, ...)', "
                "e.g. 'huber(delta=0.5)'."
            )
        name, inner = match.group(1), match.group(2)
        params: dict[str, float] = {}
        for part in (inner or "").split(","):
            if not part.strip() and not (inner or "").strip():
                break
            key, eq, value = part.partition("=")
            key = key.strip()
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not eq or not key.isidentifier() or not math.isfinite(number) or key in params:
                raise ValueError(
                    f"Loss id {entry_id!r}: {part.strip()!r} is not a 'key=value' pair with a "
                    "finite number and a new key (expected e.g. 'huber(delta=0.5)')."
                )
            params[key] = number
        return name, params

    def _resolve(self, name: str) -> tuple[LossSpec, dict[str, float]]:
        """The card named by a loss name or entry id, and the id's hyper-parameters."""
        specs = self._loaded()
        if name in specs:
            return specs[name], {}
        if "(" not in str(name):
            raise unknown_name_error("loss", str(name), specs)
        base, params = self.parse_id(name)
        if base not in specs:
            raise unknown_name_error("loss", base if params else str(name), specs)
        spec = specs[base]
        unknown = sorted(set(params) - set(spec.params))
        if unknown:
            known = ", ".join(spec.params) or "none"
            raise ValueError(
                f"Loss id {name!r}: {base!r} has no hyper-parameter {', '.join(unknown)} "
                f"(its hyper-parameters: {known})."
            )
        return spec, params

    def spec(self, name: str) -> LossSpec:
        """The card of loss ``name``, which may also be an entry id as traces print it
        (``huber(delta=0.5)`` gives the ``huber`` card); an unknown name is a ValueError listing
        the closest ones, and an id naming a hyper-parameter the card lacks is a ValueError."""
        return self._resolve(name)[0]

    def function(self, name: str) -> LossFn:
        """The pure functional form of loss ``name`` or of an entry id's loss (hyper-parameters
        are keyword-only, so an id's values are not bound)."""
        return self._functions[self._resolve(name)[0].name]

    def create(self, name: str, **params: float) -> Loss:
        """Build the module of loss ``name``, hyper-parameters validated and defaults filled in.

        ``name`` may be an entry id (``huber(delta=0.5)``); its values are used unless
        ``params`` gives the same key."""
        spec, from_id = self._resolve(name)
        return Loss(spec, self._functions[spec.name], {**from_id, **params})

    def list(self, pattern: str = "*", kind: str | None = None) -> builtins.list[str]:
        """Sorted loss names matching the ``fnmatch`` ``pattern``, optionally only for ``kind``."""
        if kind is not None and kind not in KINDS:
            raise unknown_name_error("task kind", str(kind), KINDS)
        return sorted(
            name
            for name, spec in self._loaded().items()
            if fnmatch.fnmatchcase(name, pattern) and (kind is None or kind in spec.kinds)
        )

    def variants(
        self, kind: str | None = None, density: int = 1
    ) -> builtins.list[tuple[str, dict[str, float]]]:
        """Every ``(name, hyper-parameters)`` on each card's grid (densified by ``density``, see
        :meth:`LossSpec.grid`); by name, then in grid order."""
        return [
            (name, point)
            for name in self.list(kind=kind)
            for point in self.spec(name).grid(density)
        ]

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is a loss name (or an entry id, such as ``huber(delta=0.5)``, whose
        loss and hyper-parameter names exist)."""
        if not isinstance(name, str):
            return False
        try:
            self._resolve(name)
        except ValueError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._loaded())

    def __repr__(self) -> str:
        return f"LossRegistry({len(self._functions)} functions, cards in {self.folder})"


def _check_signature(path: Path, spec: LossSpec, fn: LossFn) -> None:
    """The function takes ``(output, target, *, <card params with the card's defaults>)``."""
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keyword = {p.name: p.default for p in params if p.kind == p.KEYWORD_ONLY}
    problem = ""
    if len(positional) != 2 or len(keyword) + 2 != len(params):
        problem = "it must take (output, target, *, hyper-parameters...)"
    elif set(keyword) != set(spec.params):
        problem = f"its keyword parameters {sorted(keyword)} differ from {sorted(spec.params)}"
    else:
        wrong = [k for k, hp in spec.params.items() if keyword[k] != hp.default]
        if wrong:
            problem = f"its defaults for {wrong} differ from the card's"
    if problem:
        raise ValueError(f"Loss card {path} does not match function {fn.__qualname__}: {problem}.")


#: The registry of the losses shipped with LossRAG.
registry = LossRegistry()
#: Decorator adding a loss function to :data:`registry`.
register = registry.register
