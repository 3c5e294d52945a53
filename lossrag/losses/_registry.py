"""The loss registry: ``@register`` functions in code, cards in ``library/``, checked together."""

from __future__ import annotations

import builtins
import fnmatch
import inspect
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

    def _resolve(self, name: str) -> LossSpec:
        specs = self._loaded()
        if name not in specs:
            raise unknown_name_error("loss", str(name), specs)
        return specs[name]

    def spec(self, name: str) -> LossSpec:
        """The card of loss ``name``; an unknown name is a ValueError listing the closest ones."""
        return self._resolve(name)

    def function(self, name: str) -> LossFn:
        """The pure functional form of loss ``name`` (hyper-parameters are keyword-only)."""
        return self._functions[self._resolve(name).name]

    def create(self, name: str, **params: float) -> Loss:
        """Build the module of loss ``name``, hyper-parameters validated and defaults filled in."""
        spec = self._resolve(name)
        return Loss(spec, self._functions[name], params)

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
        return name in self._loaded()

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
