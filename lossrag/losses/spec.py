"""Loss cards: the typed description (``LossSpec``) of a candidate loss and its hyper-parameters.

Each card lives in ``library/<name>.toml`` and is validated by :class:`LossSpec` (unknown fields are
errors). ``library/README.md`` documents the fields.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from collections.abc import Mapping
from numbers import Real
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lossrag._util import suggest
from lossrag.tasks import TaskKind

__all__ = ["FAMILIES", "TARGET_OF_KIND", "Family", "HyperParam", "LossSpec", "Target"]

Family = Literal[
    "squared",  # l2
    "absolute",  # l1 and the asymmetric absolute (pinball) loss
    "robust",  # M-estimators: quadratic near zero, slower growth (or bounded) in the tails
    "likelihood",  # negative log-likelihoods with a fixed scale
    "cross_entropy",  # log-loss and its direct variants (smoothing, polynomial terms)
    "focal",  # log-loss re-weighted by the confidence of the prediction
    "noise_robust",  # bounded or symmetric losses for noisy labels
    "probability",  # scores on predicted probabilities (Brier, soft F1)
    "contrastive",  # softmax over similarities of a batch
    "metric",  # margin losses on distances
    "regulariser",  # statistics of the features, labels unused
]
#: Every family a card may name, in a fixed order (for one-hot encodings).
FAMILIES: tuple[str, ...] = get_args(Family)

Target = Literal["float", "index", "binary"]
#: The target type each task kind feeds to its losses.
TARGET_OF_KIND: dict[str, str] = {
    "regression": "float",
    "classification": "index",
    "multilabel": "binary",
    "representation": "index",
}


def _fmt(x: float) -> str:
    return "inf" if x == math.inf else "-inf" if x == -math.inf else f"{x:g}"


class HyperParam(BaseModel):
    """One hyper-parameter of a loss: default, admissible range and the grid of library variants.

    >>> HyperParam(default=1.0, low=0.0, high=math.inf, include_low=False, grid=(0.5, 1.0),
    ...            doc="kink").range_text
    '(0, inf)'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: float
    low: float
    high: float
    grid: tuple[float, ...]
    doc: str = Field(min_length=1)
    integer: bool = False
    include_low: bool = True
    include_high: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> HyperParam:
        if math.isnan(self.low) or math.isnan(self.high) or not self.low < self.high:
            raise ValueError(f"need low < high, got low={self.low}, high={self.high}")
        if not self.contains(self.default):
            raise ValueError(f"default {self.default} lies outside {self.range_text}")
        if not self.grid or list(self.grid) != sorted(set(self.grid)):
            raise ValueError("grid must be a non-empty, strictly increasing list")
        outside = [g for g in self.grid if not self.contains(g)]
        if outside:
            raise ValueError(f"grid values {outside} lie outside {self.range_text}")
        if self.default not in self.grid:
            raise ValueError(f"the grid must contain the default {self.default}")
        if self.integer and any(v != int(v) for v in (self.default, *self.grid)):
            raise ValueError("an integer hyper-parameter needs integral default and grid")
        return self

    @property
    def range_text(self) -> str:
        """The admissible range in interval notation, e.g. ``"(0, inf)"`` or ``"[0, 1)"``."""
        left = "[" if self.include_low and math.isfinite(self.low) else "("
        right = "]" if self.include_high and math.isfinite(self.high) else ")"
        return f"{left}{_fmt(self.low)}, {_fmt(self.high)}{right}"

    def contains(self, value: float) -> bool:
        """Whether ``value`` is finite and lies in the admissible range."""
        if not math.isfinite(value):
            return False
        above = value >= self.low if self.include_low else value > self.low
        below = value <= self.high if self.include_high else value < self.high
        return bool(above and below)

    def check(self, loss: str, name: str, value: Any) -> float:
        """Validate ``value`` of hyper-parameter ``name`` of ``loss``; return it (int if integer).

        Raises TypeError for a value that is not a real number and ValueError (naming the loss,
        the parameter and the range) for one outside the range, not finite or not integral.
        """
        where = f"Loss {loss!r}: hyper-parameter {name!r}"
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"{where} must be a real number, got {type(value).__name__} {value!r}.")
        number = float(value)
        if not math.isfinite(number) or not self.contains(number):
            raise ValueError(f"{where} must lie in {self.range_text}, got {value!r}.")
        if self.integer:
            if number != int(number):
                raise ValueError(f"{where} must be an integer in {self.range_text}, got {value!r}.")
            return int(number)
        return number


class LossSpec(BaseModel):
    """The card of a candidate loss: what it applies to, its hyper-parameters and its reference.

    ``kinds`` are the task kinds the loss applies to; ``target`` the target type they feed it
    (``float`` values, class ``index`` or ``binary`` 0/1 labels); ``per_batch`` says the loss exists
    only for a whole batch (a 0-dim result instead of ``(B,)``); ``non_negative`` that its values
    are never below zero; ``smooth`` that it is continuously differentiable in its inputs for every
    admissible hyper-parameter (``False``: it has kinks, described in ``notes``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    family: Family
    kinds: list[TaskKind] = Field(min_length=1)
    target: Target
    description: str = Field(min_length=1, max_length=120, pattern=r"^[^\n]*$")
    formula: str = Field(min_length=1)
    reference: str = Field(min_length=1)
    per_batch: bool = False
    non_negative: bool
    smooth: bool
    notes: str = ""
    params: dict[str, HyperParam] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> LossSpec:
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds {self.kinds} repeat an entry")
        wrong = [k for k in self.kinds if TARGET_OF_KIND[k] != self.target]
        if wrong:
            raise ValueError(f"target {self.target!r} does not fit kinds {wrong}")
        bad = [p for p in self.params if not p.isidentifier()]
        if bad:
            raise ValueError(f"hyper-parameter names {bad} are not Python identifiers")
        return self

    @classmethod
    def from_toml(cls, path: Path) -> LossSpec:
        """Read and validate the card at ``path``; a corrupt card is a ValueError naming it."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
            return cls.model_validate(data)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValidationError) as exc:
            raise ValueError(f"Invalid loss card {path}: {exc}") from exc

    def check_params(self, params: Mapping[str, Any]) -> dict[str, float]:
        """Validate hyper-parameters for this loss and fill in the defaults.

        Raises ValueError (naming the loss, the parameter and the expected range) for an unknown
        or out-of-range value, and TypeError for a value that is not a real number.
        """
        if not isinstance(params, Mapping):
            raise TypeError(
                f"Loss {self.name!r}: hyper-parameters must be a mapping, "
                f"got {type(params).__name__}."
            )
        for key in params:
            if key not in self.params:
                raise ValueError(self._unknown_param(str(key)))
        return {
            key: hp.check(self.name, key, params.get(key, hp.default))
            for key, hp in self.params.items()
        }

    def _unknown_param(self, key: str) -> str:
        if not self.params:
            return f"Loss {self.name!r} takes no hyper-parameters; got {key!r}."
        close = suggest(key, self.params)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(f"{k} in {hp.range_text}" for k, hp in self.params.items())
        return f"Loss {self.name!r} has no hyper-parameter {key!r}.{hint} It takes: {known}."

    @property
    def defaults(self) -> dict[str, float]:
        """The default value of every hyper-parameter."""
        return {key: hp.default for key, hp in self.params.items()}

    def grid(self, density: int = 1) -> list[dict[str, float]]:
        """Every combination of the hyper-parameter grids (one empty dict for a loss without).

        ``density > 1`` puts ``density - 1`` extra points between neighbouring grid values
        (geometrically spaced when both are positive, evenly otherwise; integers rounded), which
        is how the parametric library grows to the 10⁴–10⁵ entries an approximate index serves.
        """
        if density < 1:
            raise ValueError(f"Loss {self.name!r}: grid density must be >= 1, got {density}.")
        keys = list(self.params)
        values = [
            [hp.check(self.name, k, v) for v in _densify(hp, density)]
            for k, hp in self.params.items()
        ]
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def _densify(hp: HyperParam, density: int) -> list[float]:
    points = list(hp.grid)
    for a, b in itertools.pairwise(hp.grid):
        for j in range(1, density):
            f = j / density
            v = a * (b / a) ** f if a > 0 and b > 0 else a + (b - a) * f
            points.append(float(round(v)) if hp.integer else v)
    return sorted(set(points))
