"""The problem contract (budget, splits, model, evaluation) and the problem registry.

A problem is a typed, frozen pydantic config (``extra="forbid"``) whose methods build the data
(:meth:`Problem.load`), the reference model (:meth:`Problem.build_model`) and the scores
(:meth:`Problem.evaluate`). Problems are registered by name with :func:`register_problem`, the
same way users register their own.
"""

from __future__ import annotations

import abc
import dataclasses
import fnmatch
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator
from torch import Tensor, nn

from lossrag._util import unknown_name_error
from lossrag.tasks import Task

__all__ = [
    "Batch",
    "Budget",
    "LossChoice",
    "Problem",
    "ProblemCard",
    "ProblemRegistry",
    "Sampler",
    "Split",
    "Splits",
    "get_problem",
    "list_problems",
    "problem_card",
    "register_problem",
    "registry",
]

#: One training batch: inputs and ``{task name: target}``.
Batch = tuple[Tensor, dict[str, Tensor]]


class Budget(BaseModel):
    """The training budget every method gets on a problem (Adam, fixed epochs).

    Attributes:
        epochs: Passes over the training split (for a streaming problem: ``len(train) /
            batch_size`` fresh batches per epoch).
        batch_size: Training batch size.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: PositiveInt
    batch_size: PositiveInt
    lr: PositiveFloat = 1e-3
    weight_decay: float = Field(default=0.0, ge=0.0)

    def steps_per_epoch(self, n_train: int) -> int:
        """Number of optimiser steps in one epoch over ``n_train`` samples (last batch kept)."""
        return max(1, math.ceil(n_train / self.batch_size))


class LossChoice(BaseModel):
    """A library loss with its hyper-parameters, put in place of a task's natural loss.

    >>> LossChoice(loss="huber", params={"delta": 0.5}).id
    'huber(delta=0.5)'

    Attributes:
        loss: Library loss name (``lossrag library list``).
        params: Its hyper-parameters; the card's defaults for those left out.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    loss: str
    params: dict[str, float] = Field(default_factory=dict)

    @property
    def id(self) -> str:
        """The library entry id, e.g. ``huber(delta=0.5)`` (``l1`` without parameters)."""
        from lossrag.embed import variant_id

        return variant_id(self.loss, self.params)


@dataclass(frozen=True)
class Split:
    """One data split: inputs and one target tensor per task.

    Attributes:
        x: Inputs, first dimension the sample.
        y: ``{task name: target}``, each with the same first dimension as ``x`` (class indices
            ``int64``, regression targets ``float32``).
        metric_scale: ``{task name: factor}`` turning a regression metric on ``y``'s units into
            the reported units (e.g. z-scores -> meV): MAE and RMSE are multiplied by the factor,
            MSE by its square. Tasks not listed use 1.
    """

    x: Tensor
    y: dict[str, Tensor]
    metric_scale: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        for name, target in self.y.items():
            if target.shape[0] != n:
                raise ValueError(
                    f"Split: target {name!r} has {target.shape[0]} rows, expected {n} (as `x`)."
                )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, index: Tensor | slice) -> Split:
        """The sub-split at ``index`` (a slice or an index tensor), sharing ``metric_scale``."""
        return Split(self.x[index], {k: v[index] for k, v in self.y.items()}, self.metric_scale)


#: Draws ``n`` fresh training samples; all randomness comes from the generator.
Sampler = Callable[[int, torch.Generator], Split]


@dataclass(frozen=True)
class Splits:
    """Train, validation and test splits of one problem instance.

    The validation split is the query set of meta-learning methods; the test split is only
    scored. ``sampler`` draws fresh training samples from the same distribution as ``train`` for
    problems that can stream (see :attr:`Problem.stream`), else it is ``None``.
    """

    train: Split
    val: Split
    test: Split
    sampler: Sampler | None = None


class Problem(BaseModel, abc.ABC):
    """A benchmark problem: data, tasks, reference model, budget and metrics.

    Subclasses are pydantic configs (frozen, ``extra="forbid"``) with a ``family`` literal that
    discriminates them, and implement :meth:`_make_tasks`, :attr:`in_dim` and :meth:`load`.

    Attributes:
        name: Registered name (filled in by :func:`get_problem`; defaults to ``family``).
        budget: Training budget shared by every method.
        hidden: Widths of the shared trunk's hidden layers.
        stream: Train on fresh samples each step (:meth:`train_batches`) instead of epochs over a
            fixed training split; only for problems whose ``can_stream`` is true.
        losses: Task name -> the library loss it trains with instead of its natural loss (e.g.
            the loss oracle's choice, :mod:`lossrag.bench.oracle`); tasks not named keep theirs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Whether the problem's data can be drawn afresh (generated problems).
    can_stream: ClassVar[bool] = False
    #: Names of tasks that are trained but not scored (junk tasks).
    unscored: ClassVar[tuple[str, ...]] = ()

    family: str
    name: str = ""
    budget: Budget
    hidden: tuple[PositiveInt, ...] = Field(min_length=1)
    stream: bool = False
    losses: dict[str, LossChoice] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_problem(self) -> Problem:
        if not self.name:
            object.__setattr__(self, "name", self.family)
        if self.stream and not self.can_stream:
            raise ValueError(f"Problem {self.name!r}: `stream=True` needs a generated problem.")
        return self

    @abc.abstractmethod
    def _make_tasks(self) -> list[Task]:
        """Build the task list (called once, lazily: tasks validate against the loss registry)."""

    @property
    @abc.abstractmethod
    def in_dim(self) -> int:
        """Number of input features after flattening ``x``."""

    @abc.abstractmethod
    def load(self, seed: int) -> Splits:
        """Build the train/val/test splits; a deterministic function of ``seed`` and the config."""

    @cached_property
    def tasks(self) -> list[Task]:
        """All tasks the model is trained on, scored and junk, with :attr:`losses` in place.

        Raises:
            ValueError: :attr:`losses` names a task the problem lacks, or a loss that does not
                apply to the task.
        """
        tasks = self._make_tasks()
        unknown = sorted(set(self.losses) - {t.name for t in tasks})
        if unknown:
            raise ValueError(
                f"Problem {self.name!r}: `losses` names tasks it does not have: {unknown}; its "
                f"tasks are {', '.join(t.name for t in tasks)}."
            )
        return [
            dataclasses.replace(t, loss=c.loss, loss_params=c.params)
            if (c := self.losses.get(t.name))
            else t
            for t in tasks
        ]

    @property
    def scored(self) -> list[str]:
        """Names of the tasks scored by :meth:`evaluate` and Δm (junk tasks excluded)."""
        return [t.name for t in self.tasks if t.name not in self.unscored]

    @property
    def higher_is_better(self) -> dict[str, bool]:
        """``{scored task: whether a larger metric is better}``, as :func:`delta_m` takes it."""
        by_name = {t.name: t for t in self.tasks}
        return {name: by_name[name].higher_is_better for name in self.scored}

    def regression_dims(self) -> dict[str, int]:
        """Output width of each regression task wider than one (default: none)."""
        return {}

    def _make_model(self) -> nn.Module:
        """The reference model, built under the seeded RNG of :meth:`build_model`."""
        from lossrag.models import MultiTaskMLP

        return MultiTaskMLP(self.in_dim, list(self.hidden), self.tasks, self.regression_dims())

    def build_model(self, seed: int) -> nn.Module:
        """The reference model with a seeded initialisation that leaves the global RNG untouched.

        It has a ``.trunk`` (the shared part, for ``shared=``) and ``forward(x) -> {task: output}``.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._make_model()

    def train_batches(self, splits: Splits, generator: torch.Generator) -> Iterator[Batch]:
        """One epoch of training batches.

        Shuffled minibatches of ``splits.train``, or, when :attr:`stream` is set, as many batches
        of fresh samples from ``splits.sampler``. All randomness comes from ``generator``.
        """
        bs = self.budget.batch_size
        steps = self.budget.steps_per_epoch(len(splits.train))
        if self.stream:
            if splits.sampler is None:
                raise ValueError(
                    f"Problem {self.name!r}: `stream=True` but the splits can't sample."
                )
            for _ in range(steps):
                batch = splits.sampler(bs, generator)
                yield batch.x, batch.y
            return
        order = torch.randperm(len(splits.train), generator=generator)
        for step in range(steps):
            batch = splits.train.take(order[step * bs : (step + 1) * bs])
            yield batch.x, batch.y

    def evaluate(
        self,
        model: nn.Module,
        split: Split,
        *,
        batch_size: int = 4096,
        include_unscored: bool = False,
    ) -> dict[str, float]:
        """Score ``model`` on ``split``: ``{task name: metric}`` for every scored task.

        Regression metrics are reported in the split's units (see :attr:`Split.metric_scale`).
        The model is put in eval mode and restored afterwards; no gradients are taken.
        """
        outputs = _predict(model, split.x, batch_size)
        names = [t.name for t in self.tasks] if include_unscored else self.scored
        by_name = {t.name: t for t in self.tasks}
        return {
            name: _score(by_name[name], outputs, split.y[name], split.metric_scale.get(name, 1.0))
            for name in names
        }

    def with_overrides(self, **overrides: Any) -> Problem:
        """A validated copy with some fields replaced; nested configs (``budget``) merge."""
        merged = _deep_merge(self.model_dump(), overrides)
        return type(self).model_validate(merged)

    def rng(self, seed: int) -> np.random.Generator:
        """The numpy generator of this problem's data for ``seed`` (independent per family)."""
        return np.random.default_rng([seed, *self.family.encode()])


def _predict(model: nn.Module, x: Tensor, batch_size: int) -> dict[str, Tensor]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            chunks = [model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError("evaluate: the split is empty.")
    return {name: torch.cat([c[name] for c in chunks]) for name in chunks[0]}


def _score(task: Task, outputs: Mapping[str, Tensor], target: Tensor, scale: float) -> float:
    from lossrag.metrics import evaluate

    if task.name not in outputs:
        raise ValueError(
            f"evaluate: the model gave no output for task {task.name!r}; it gave {sorted(outputs)}."
        )
    task.check(outputs[task.name], target)
    value = evaluate(task, outputs[task.name], target)
    if task.metric == "mse":
        return value * scale**2
    if task.metric in ("mae", "rmse"):
        return value * abs(scale)
    return value


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


ProblemFactory = Callable[[], Problem]
F = TypeVar("F", bound=ProblemFactory)


@dataclass(frozen=True)
class ProblemCard:
    """Registry entry of one problem.

    Attributes:
        name: Registered name.
        factory: Zero-argument callable returning the problem's default config.
        description: One line on what the problem tests.
        source: Where its data comes from (``generated``, ``scikit-learn``, ``apt:...``,
            ``pip:...``).
    """

    name: str
    factory: ProblemFactory
    description: str = ""
    source: str = "generated"


class ProblemRegistry:
    """Problems by name: :meth:`register` (a decorator), :meth:`create`, :meth:`list`."""

    def __init__(self) -> None:
        self._cards: dict[str, ProblemCard] = {}

    def register(
        self,
        name: str,
        *,
        description: str = "",
        source: str = "generated",
        overwrite: bool = False,
    ) -> Callable[[F], F]:
        """Decorator registering a zero-argument factory (or a ``Problem`` subclass) as ``name``."""
        if not name or not isinstance(name, str):
            raise ValueError(f"register_problem: name must be a non-empty string, got {name!r}.")

        def decorate(factory: F) -> F:
            if name in self._cards and not overwrite:
                raise ValueError(
                    f"register_problem: {name!r} is already registered; pass overwrite=True."
                )
            self._cards[name] = ProblemCard(name, factory, description, source)
            return factory

        return decorate

    def card(self, name: str) -> ProblemCard:
        """The registry entry of ``name``; unknown names raise with close matches."""
        if name not in self._cards:
            raise unknown_name_error("problem", name, self._cards)
        return self._cards[name]

    def create(self, name: str, **overrides: Any) -> Problem:
        """Build the problem ``name``, with some config fields overridden (validated)."""
        problem = self.card(name).factory()
        if not isinstance(problem, Problem):
            raise TypeError(
                f"Problem factory for {name!r} returned {type(problem).__name__}, not a Problem."
            )
        return problem.with_overrides(name=name, **overrides)

    def list(self, pattern: str | None = None) -> list[str]:
        """Sorted registered names, optionally filtered by a shell pattern (``"mnist1d*"``)."""
        names = sorted(self._cards)
        return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


#: The registry of built-in and user problems.
registry = ProblemRegistry()


def register_problem(
    name: str, *, description: str = "", source: str = "generated", overwrite: bool = False
) -> Callable[[F], F]:
    """Register a problem factory under ``name`` (see :meth:`ProblemRegistry.register`).

    >>> from lossrag.bench.problems import DigitsProblem, register_problem
    >>> @register_problem("digits-quick", description="digits-mtl, 2 epochs", overwrite=True)
    ... def digits_quick() -> DigitsProblem:
    ...     return DigitsProblem(budget={"epochs": 2, "batch_size": 64})
    >>> get_problem("digits-quick").budget.epochs
    2
    """
    return registry.register(name, description=description, source=source, overwrite=overwrite)


def get_problem(name: str, **overrides: Any) -> Problem:
    """Build a registered problem, e.g. ``get_problem("mnist1d-mtl", n_train=5000)``.

    Raises:
        ValueError: Unknown name (with close matches), or an invalid override.
    """
    if name == "toy2d" and "toy2d" not in registry.list():
        raise ValueError(
            "Problem 'toy2d' is not an MLP problem and has its own interface: use "
            "`lossrag.bench.problems.Toy2D()` (losses, gradients, pareto_distance, run)."
        )
    return registry.create(name, **overrides)


def list_problems(pattern: str | None = None) -> list[str]:
    """Names of the registered problems, optionally matching a shell pattern."""
    return registry.list(pattern)


def problem_card(name: str) -> ProblemCard:
    """The registry entry (factory, description, data source) of problem ``name``."""
    return registry.card(name)


def split_sizes(problem: str, available: int, sizes: Sequence[int]) -> list[int]:
    """Check that the requested split sizes fit in ``available`` samples and return them."""
    if sum(sizes) > available:
        raise ValueError(
            f"Problem {problem!r}: the splits ask for {' + '.join(map(str, sizes))} = {sum(sizes)} "
            f"samples but only {available} are available; lower n_train / n_val / n_test."
        )
    return list(sizes)


def standardize(
    train: np.ndarray, *others: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Z-score arrays with the mean and std of ``train`` (per column; a zero std counts as 1).

    Returns ``(mean, std, [train, *others] standardized)``.
    """
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return mean, std, [(a - mean) / std for a in (train, *others)]
