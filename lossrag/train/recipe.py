"""Meta-training recipes: pydantic-validated TOML, unknown fields are errors."""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lossrag._util import data_dir, suggest
from lossrag.train.generate import Distribution

__all__ = ["ES", "Online", "Recipe", "load_recipe", "shipped_recipes"]


class ES(BaseModel):
    """Evolution strategies over whole generated runs (antithetic, common random numbers).

    Attributes:
        generations: ES updates.
        population: Problems per generation; each is run with ``+σε`` and ``−σε``.
        sigma: Perturbation scale, in the policy's log-parameters.
        lr: Adam learning rate of the log-parameters.
        eval_every: Generations between measurements of the meta-objective.
        eval_problems: Held-out generated problems the meta-objective is measured on.
        clip: Largest per-task log-ratio counted in a reward.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    generations: int = Field(ge=1)
    population: int = Field(ge=1)
    sigma: float = Field(default=0.15, gt=0.0, le=2.0)
    lr: float = Field(default=0.05, gt=0.0, le=1.0)
    eval_every: int = Field(default=5, ge=1)
    eval_problems: int = Field(default=8, ge=1)
    clip: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)


class Online(BaseModel):
    """The online phase after ES: Reptile over the online meta-learning loop trains Δφ.

    Each round, ``population`` fresh problems are trained with the ES policy adapting its
    correction online from a query stream (their validation split), every run starting from the
    current Δφ; Δφ then moves ``step`` of the way to the mean of the adapted ones (Reptile). The
    whole-run objective on the held-out problems decides what ships: the trained Δφ only if it
    beats the prior alone (Δφ = 0) there by more than twice the paired gain's standard error
    (:func:`lossrag.train.es.correction_gain`).

    Attributes:
        rounds: Reptile rounds (0: no online phase; Δφ stays 0).
        population: Problems per round (run in parallel).
        step: Reptile step size.
        meta_lr: Adam learning rate of the online meta-updates within a run.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rounds: int = Field(default=0, ge=0)
    population: int = Field(default=2, ge=1)
    step: float = Field(default=0.5, gt=0.0, le=1.0)
    meta_lr: float = Field(default=1e-3, gt=0.0, le=1.0)


class Recipe(BaseModel):
    """A ``lossrag train`` recipe.

    Attributes:
        name: The policy's name.
        description: One line for its card.
        seed: Seed of the problem stream and the perturbations.
        workers: Parallel processes (one thread each).
        problems: The generated problem distribution.
        es: The ES schedule.
        online: The online phase (Reptile over the online loop) that trains Δφ.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    seed: int = 0
    workers: int = Field(default=2, ge=1)
    problems: Distribution = Distribution()
    es: ES
    online: Online = Online()

    @property
    def digest(self) -> str:
        """SHA-256 of the recipe's canonical JSON."""
        return _sha(self.model_dump())

    @property
    def online_digest(self) -> str:
        """SHA-256 of what the online phase depends on (the ES phase's and its own fields): a
        checkpoint of it stays valid when only the name, description or workers change."""
        return _sha(self.model_dump(include={"seed", "problems", "es", "online"}))

    @property
    def es_digest(self) -> str:
        """SHA-256 of what the ES phase depends on (seed, problems, ES schedule): a checkpoint
        of it stays valid when only the description, workers or online phase change."""
        return _sha(self.model_dump(include={"seed", "problems", "es"}))


def _sha(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def shipped_recipes() -> list[str]:
    """The names of the recipes shipped with LossRAG (``training/NAME.toml``)."""
    return sorted(p.stem for p in data_dir("training").glob("*.toml"))


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate a TOML recipe: a file, or the name of a shipped recipe
    (:func:`shipped_recipes`; a file of that name wins). Errors name the file and the
    offending field."""
    path = Path(path)
    shipped = data_dir("training") / f"{path}.toml"
    if not path.is_file() and path.suffix == "" and len(path.parts) == 1 and shipped.is_file():
        path = shipped
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as err:
        names = shipped_recipes()
        close = suggest(path.stem, names)
        hint = f"; did you mean {close[0]!r}?" if close and path.parent == Path() else ""
        raise FileNotFoundError(
            f"Recipe {path} does not exist (a file, or a shipped recipe's name: "
            f"{', '.join(names)}){hint}"
        ) from err
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"Recipe {path} is not valid TOML: {err}") from err
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(_problem(e["loc"], e["type"], e["msg"]) for e in err.errors())
        raise ValueError(f"Recipe {path}: {problems}") from err


def _problem(loc: tuple[int | str, ...], kind: str, message: str) -> str:
    """One validation error as ``field: what is wrong``; an unknown field with the closest
    known one of its section."""
    where = ".".join(map(str, loc)) or "(recipe)"
    message = message.removeprefix("Value error, ")
    if kind == "extra_forbidden":
        close = suggest(str(loc[-1]), _fields(loc[:-1]))
        message = "unknown field" + (f"; did you mean {close[0]!r}?" if close else "")
    return message if message.startswith((f"{where}:", f"{where}.")) else f"{where}: {message}"


def _fields(section: tuple[int | str, ...]) -> list[str]:
    """The fields of the recipe's ``section`` (``()``: the top level; none where it is not a
    section)."""
    model: type[BaseModel] = Recipe
    for part in section:
        field = model.model_fields.get(str(part))
        inner = None if field is None else field.annotation
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return []
        model = inner
    return list(model.model_fields)
