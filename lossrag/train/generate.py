"""Generated multi-task problems: the meta-training distribution of ``lossrag train``.

Every problem shares one input distribution: ``x ~ N(0, I)``, a hidden teacher
``z = tanh(x A / √d)``, and tasks read out of ``z``:

- *regression*: ``y = s·(c + sin(z·u) + ½ z·v) + s·σ·ε`` with a loss scale ``s²`` from 10⁻⁴ to
  10⁴, an offset ``c`` and target noise ``σ`` (Gaussian, or Student-t for heavy tails), scored by
  MSE or MAE; a share of the training and validation targets may carry gross one-sided errors
  (``+10·s·|N(0, 1)|``, the test split stays clean), where a robust loss serves the metric
  better than L2;
- *classification*: ``y = argmax(zW + τ·Gumbel)``, then a fraction of the training and
  validation labels flipped at random (the test split's stay clean); a task may be long-tailed
  (samples kept with a probability falling geometrically over the classes, in every split: the
  imbalance is the data's; ``tail_in_test=False`` keeps the test split's classes as drawn) and
  scored by accuracy or macro-F1 (``f1``), which weighs the rare
  classes as much as the frequent ones where a loss on samples does not;
- *junk*: regression targets that are pure noise, or uniformly random labels; trained, never
  scored;
- *duplicates* of another task (same function, own noise), and *conflicting* tasks (the same
  projections with the non-linear part negated).

None of the benchmark suite's data is used (the protocol's held-out rule).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from lossrag.bench.data.corrupt import add_outliers, long_tail_mask
from lossrag.bench.problems.base import Budget, Problem, Split, Splits
from lossrag.tasks import Task

__all__ = ["Distribution", "GeneratedProblem", "TaskSpec", "sample_problem"]

#: A round of samples: inputs, targets by task, and the samples a long tail keeps (``None``: no
#: task is long-tailed).
_Drawn = tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]


class TaskSpec(BaseModel):
    """One generated task.

    Attributes:
        kind: ``regression`` or ``classification``.
        classes: Number of classes (classification).
        log10_scale: ``log10 s`` of a regression target (its loss scales as ``s²``).
        noise: Target noise ``σ`` (regression) or the training and validation labels' flip rate
            (classification).
        junk: Targets are pure noise; trained but not scored.
        offset: Regression target offset ``c``, in units of ``s``.
        tail: Student-t degrees of freedom of the regression noise (``None``: Gaussian).
        outliers: Share of the training and validation regression targets with a gross error.
        metric: The scored metric: ``mse`` or ``mae`` for a regression, ``accuracy`` or ``f1``
            (macro) for a classification; ``None``: ``mse`` for a regression, ``accuracy`` for a
            classification.
        imbalance: Ratio of the most to the least frequent class (classification; 1: as drawn).
        source: Index of the task this one duplicates or conflicts with (else ``None``).
        relation: ``duplicate`` or ``conflict`` when ``source`` is set.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["regression", "classification"]
    classes: int = Field(default=2, ge=2)
    log10_scale: float = 0.0
    noise: float = Field(default=0.0, ge=0.0)
    junk: bool = False
    offset: float = 0.0
    tail: float | None = Field(default=None, gt=0.0)
    outliers: float = Field(default=0.0, ge=0.0, le=1.0)
    metric: Literal["mse", "mae", "accuracy", "f1"] | None = None
    imbalance: float = Field(default=1.0, ge=1.0)
    source: int | None = None
    relation: Literal["duplicate", "conflict"] | None = None

    def model_post_init(self, _: object) -> None:
        """The metric fits the kind; only a classification is long-tailed."""
        fits = ("mse", "mae") if self.kind == "regression" else ("accuracy", "f1")
        if self.metric is not None and self.metric not in fits:
            raise ValueError(
                f"TaskSpec: a {self.kind} task is scored by {' or '.join(fits)}, not "
                f"{self.metric!r}."
            )
        if self.imbalance > 1 and self.kind != "classification":
            raise ValueError(
                f"TaskSpec: imbalance applies to classification tasks, not {self.kind}."
            )


class GeneratedProblem(Problem):
    """A problem drawn by :func:`sample_problem`; ``load(seed)`` draws its data."""

    family: Literal["generated"] = "generated"
    in_features: int = Field(ge=2)
    latent: int = Field(ge=2)
    specs: tuple[TaskSpec, ...] = Field(min_length=1)
    n_train: int = Field(ge=16)
    n_val: int = Field(default=512, ge=16)
    n_test: int = Field(default=512, ge=16)
    structure_seed: int = 0
    #: Whether the test split shares a long-tailed task's tail (``False``: its classes as
    #: drawn, a shift of the class prior between training and test, as on
    #: ``mnist1d-imbalanced``).
    tail_in_test: bool = True

    def model_post_init(self, _: object) -> None:
        """At most one task is long-tailed: the samples kept follow one task's classes."""
        tailed = [i for i, s in enumerate(self.specs) if s.imbalance > 1]
        if len(tailed) > 1:
            raise ValueError(
                f"GeneratedProblem {self.name!r}: tasks {', '.join(f't{i}' for i in tailed)} are "
                "long-tailed; at most one task may be (the samples kept follow its classes)."
            )

    @property
    def in_dim(self) -> int:
        """The input dimension."""
        return self.in_features

    def _make_tasks(self) -> list[Task]:
        return [
            Task(f"t{i}", kind="regression", metric=s.metric or "mse")
            if s.kind == "regression"
            else Task(f"t{i}", kind="classification", num_classes=s.classes, metric=s.metric)
            for i, s in enumerate(self.specs)
        ]

    @property
    def scored(self) -> list[str]:
        """Every task but the junk ones."""
        return [f"t{i}" for i, s in enumerate(self.specs) if not s.junk]

    def load(self, seed: int) -> Splits:
        """The teacher follows ``structure_seed``; the samples follow ``seed``."""
        teacher = np.random.default_rng([self.structure_seed, 7])
        a = teacher.standard_normal((self.in_features, self.latent))
        readouts = []
        for s in self.specs:
            width = s.classes if s.kind == "classification" else 2
            readouts.append(teacher.standard_normal((self.latent, width)) / np.sqrt(self.latent))
        for i, s in enumerate(self.specs):
            if s.source is not None:
                readouts[i] = readouts[s.source]
        rng = self.rng(seed)
        train, val, test = (
            self._split(partial(self._draw, a, readouts, n, rng, corrupt), n, corrupt)
            for n, corrupt in ((self.n_train, True), (self.n_val, True), (self.n_test, False))
        )
        return Splits(train, val, test)

    def _split(self, draw: Callable[[], _Drawn], n: int, corrupt: bool) -> Split:
        """``n`` samples of ``draw`` (:meth:`_draw`); with a long-tailed task, drawn in rounds
        until ``n`` are kept."""
        xs: list[np.ndarray] = []
        ys: list[dict[str, np.ndarray]] = []
        while sum(len(x) for x in xs) < n:
            x, y, keep = draw()
            if keep is None or not (corrupt or self.tail_in_test):
                keep = np.ones(len(x), dtype=bool)
            xs.append(x[keep])
            ys.append({k: v[keep] for k, v in y.items()})
        return Split(
            torch.from_numpy(np.concatenate(xs)[:n].astype(np.float32)),
            {k: torch.from_numpy(np.concatenate([y[k] for y in ys])[:n]) for k in ys[0]},
        )

    def _draw(
        self,
        a: np.ndarray,
        readouts: list[np.ndarray],
        n: int,
        rng: np.random.Generator,
        corrupt: bool,
    ) -> _Drawn:
        """``n`` inputs, their targets and which samples the long tail keeps (``None``: no task
        is long-tailed)."""
        x = rng.standard_normal((n, self.in_features))
        z = np.tanh(x @ a / np.sqrt(self.in_features))
        y: dict[str, np.ndarray] = {}
        keep: np.ndarray | None = None
        for i, s in enumerate(self.specs):
            proj = z @ readouts[i]
            if s.kind == "regression":
                sign = -1.0 if s.relation == "conflict" else 1.0
                clean = sign * np.sin(3.0 * proj[:, 0]) + 0.5 * proj[:, 1]
                clean = rng.standard_normal(n) if s.junk else clean
                eps = rng.standard_normal(n) if s.tail is None else rng.standard_t(s.tail, n)
                value = s.offset + clean + s.noise * eps
                if corrupt and s.outliers > 0:
                    value = add_outliers(value, s.outliers, 10.0, rng)
                y[f"t{i}"] = (10.0**s.log10_scale * value).astype(np.float32)
            else:
                logits = proj * (-1.0 if s.relation == "conflict" else 1.0) * 3.0
                labels = np.argmax(logits + rng.gumbel(size=logits.shape) * 0.3, axis=1)
                if s.imbalance > 1:
                    keep = long_tail_mask(labels, s.imbalance, s.classes, rng)
                flip = rng.random(n) < (1.0 if s.junk else s.noise)
                flipped = np.where(flip, rng.integers(0, s.classes, n), labels)
                labels = flipped if corrupt or s.junk else labels  # the test split is clean
                y[f"t{i}"] = labels.astype(np.int64)
        return x, y, keep


class Distribution(BaseModel):
    """Ranges the generated problems are drawn from (a recipe's ``[problems]`` table).

    Attributes:
        tasks: Least and most tasks.
        classification: Probability that a task is a classification task.
        log10_scale: Range of ``log10 s`` (regression loss scale ``s²``: 10⁻⁴…10⁴ by default).
        noise: Range of the regression target noise ``σ``.
        label_flip: Range of the classification label flip rate.
        junk: Probability that a task is junk.
        outliers: Probability that a regression task's training and validation targets carry
            gross errors, on a share drawn from ``outlier_share``.
        heavy_tail: Probability that a regression task's noise is Student-t, with degrees of
            freedom drawn from ``tail_dof``.
        offset: Range of ``|c|``, a regression target's offset in units of its scale (sign at
            random).
        mae: Probability that a regression task is scored by MAE (else MSE).
        imbalance: Probability that a classification task is long-tailed, its most frequent
            class ``imbalance_ratio`` times as frequent as its rarest.
        f1: Probability that a classification task is scored by macro-F1 (else accuracy).
        duplicate: Probability that a task duplicates an earlier one.
        conflict: Probability that a task conflicts with an earlier one.
        n_train: Range of training-set sizes.
        in_features: Range of input widths.
        hidden: Widths the trunk's layers are drawn from.
        depth: Range of the number of trunk layers.
        steps: Range of training steps per run.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: tuple[int, int] = (2, 40)
    classification: float = Field(default=0.4, ge=0.0, le=1.0)
    log10_scale: tuple[float, float] = (-2.0, 2.0)
    noise: tuple[float, float] = (0.0, 1.0)
    label_flip: tuple[float, float] = (0.0, 0.4)
    junk: float = Field(default=0.15, ge=0.0, le=1.0)
    outliers: float = Field(default=0.0, ge=0.0, le=1.0)
    outlier_share: tuple[float, float] = (0.05, 0.2)
    heavy_tail: float = Field(default=0.0, ge=0.0, le=1.0)
    tail_dof: tuple[float, float] = (1.5, 5.0)
    offset: tuple[float, float] = (0.0, 0.0)
    mae: float = Field(default=0.0, ge=0.0, le=1.0)
    imbalance: float = Field(default=0.0, ge=0.0, le=1.0)
    imbalance_ratio: tuple[float, float] = (5.0, 50.0)
    f1: float = Field(default=0.0, ge=0.0, le=1.0)
    duplicate: float = Field(default=0.1, ge=0.0, le=1.0)
    conflict: float = Field(default=0.1, ge=0.0, le=1.0)
    n_train: tuple[int, int] = (256, 2048)
    in_features: tuple[int, int] = (8, 48)
    hidden: tuple[int, ...] = (32, 64, 128)
    depth: tuple[int, int] = (1, 3)
    steps: tuple[int, int] = (150, 400)

    def model_post_init(self, _: object) -> None:
        """Every range is ordered and in bounds."""
        ranges = (
            *("tasks", "log10_scale", "noise", "label_flip", "outlier_share", "tail_dof"),
            *("offset", "imbalance_ratio", "n_train", "in_features"),
        )
        for name in ranges:
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"problems.{name}: the range {low}..{high} is empty.")
        for name in ("depth", "steps"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"problems.{name}: need 1 <= low <= high, got {low}..{high}.")
        if self.tasks[0] < 2:
            raise ValueError(
                f"problems.tasks: a multi-task problem needs >= 2 tasks, got {self.tasks}."
            )
        if self.imbalance_ratio[0] < 1:
            raise ValueError(
                f"problems.imbalance_ratio: a class ratio is >= 1, got {self.imbalance_ratio}."
            )
        if self.n_train[0] < 16 or self.in_features[0] < 2 or not self.hidden:
            raise ValueError(
                "problems: need n_train >= 16, in_features >= 2 and some hidden widths."
            )


def _corruption(dist: Distribution, rng: np.random.Generator) -> dict[str, object]:
    """A regression task's offset, heavy tail, gross errors and metric. Each is drawn only where
    the distribution has it, so a recipe without them draws the problems it always drew."""
    found: dict[str, object] = {}
    if dist.offset[1] > 0:
        found["offset"] = float(rng.uniform(*dist.offset)) * float(rng.choice([-1.0, 1.0]))
    if dist.heavy_tail > 0 and rng.random() < dist.heavy_tail:
        found["tail"] = float(rng.uniform(*dist.tail_dof))
    if dist.outliers > 0 and rng.random() < dist.outliers:
        found["outliers"] = float(rng.uniform(*dist.outlier_share))
    if dist.mae > 0 and rng.random() < dist.mae:
        found["metric"] = "mae"
    return found


def _class_balance(dist: Distribution, rng: np.random.Generator, tailed: bool) -> dict[str, object]:
    """A classification task's long tail (none where another task of the problem is
    ``tailed``: the samples kept follow one task's classes) and metric, drawn only where the
    distribution has them (as :func:`_corruption`)."""
    found: dict[str, object] = {}
    if dist.imbalance > 0 and not tailed and rng.random() < dist.imbalance:
        found["imbalance"] = float(rng.uniform(*dist.imbalance_ratio))
    if dist.f1 > 0 and rng.random() < dist.f1:
        found["metric"] = "f1"
    return found


def sample_problem(dist: Distribution, seed: int) -> GeneratedProblem:
    """Draw problem number ``seed`` of ``dist`` (a deterministic function of both)."""
    rng = np.random.default_rng([seed, 11])
    n_tasks = int(rng.integers(dist.tasks[0], dist.tasks[1] + 1))
    specs: list[TaskSpec] = []
    for _ in range(n_tasks):
        bases = [j for j, s in enumerate(specs) if s.source is None and not s.junk]
        if bases and rng.random() < dist.duplicate + dist.conflict:
            source = bases[int(rng.integers(0, len(bases)))]
            is_dup = rng.random() < dist.duplicate / (dist.duplicate + dist.conflict)
            relation = "duplicate" if is_dup else "conflict"
            # a copy follows the source's long tail through the data; it adds none of its own
            update = {"source": source, "relation": relation, "imbalance": 1.0}
            specs.append(specs[source].model_copy(update=update))
            continue
        classification = rng.random() < dist.classification
        junk = rng.random() < dist.junk
        if classification:
            spec = TaskSpec(
                kind="classification",
                classes=int(rng.integers(2, 11)),
                noise=float(rng.uniform(*dist.label_flip)),
                junk=junk,
            )
            if not junk:
                tailed = any(s.imbalance > 1 for s in specs)
                spec = spec.model_copy(update=_class_balance(dist, rng, tailed))
            specs.append(spec)
        else:
            spec = TaskSpec(
                kind="regression",
                log10_scale=float(rng.uniform(*dist.log10_scale)),
                noise=float(rng.uniform(*dist.noise)),
                junk=junk,
            )
            specs.append(spec.model_copy(update=_corruption(dist, rng)))
    if all(s.junk for s in specs):
        specs[0] = specs[0].model_copy(update={"junk": False})
    n_train = int(rng.integers(dist.n_train[0], dist.n_train[1] + 1))
    batch = int(rng.choice([32, 64, 128]))
    steps = int(rng.integers(dist.steps[0], dist.steps[1] + 1))
    per_epoch = max(1, -(-n_train // batch))
    depth = int(rng.integers(dist.depth[0], dist.depth[1] + 1))
    return GeneratedProblem(
        name=f"generated-{seed}",
        in_features=int(rng.integers(dist.in_features[0], dist.in_features[1] + 1)),
        latent=int(rng.integers(4, 17)),
        specs=tuple(specs),
        n_train=n_train,
        hidden=tuple(int(rng.choice(dist.hidden)) for _ in range(depth)),
        budget=Budget(epochs=max(1, round(steps / per_epoch)), batch_size=batch, lr=1e-3),
        structure_seed=seed,
    )
