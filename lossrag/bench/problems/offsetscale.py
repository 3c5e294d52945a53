"""``offset-scale``: a heavy-tailed regression with a large offset beside a tiny-scale one."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt

from lossrag.bench.data.synthetic import OffsetScaleInstance, make_offset_scale_instance
from lossrag.bench.problems.base import Budget, Problem, Split, Splits, register_problem
from lossrag.tasks import Task

__all__ = ["OffsetScaleProblem"]


class OffsetScaleProblem(Problem):
    """Raw-unit regressions whose scales differ by 10⁵, a class task and a junk task.

    ``x ~ N(0, I_20)``. Tasks (natural losses, on the raw targets: nothing is z-scored):

    - ``heavy``: ``offset + scale·g₀(x)`` (≈ 10³ ± 10²) plus Student-t noise (ν = ``tail_df``)
      of size ``tail_noise·scale`` in the training and validation splits -> MAE in raw units;
    - ``tiny``: ``tiny·g₁(x)`` (std ≈ 10⁻³) -> MAE in raw units;
    - ``class``: the ``argmax`` of ``num_classes`` teacher logits -> accuracy;
    - ``junk``: pure Gaussian noise of std ``junk_scale``, independent of ``x``; trained, not
      scored.

    ``g₀``, ``g₁`` and the logits are random ``tanh`` teachers drawn from the seed (unit variance).
    The test split is clean (no Student-t noise), so the MAE measures how well ``g₀`` was learnt.
    The problem stresses loss scale (an initial MSE of ≈ 10⁶ beside ≈ 10⁻⁶), offsets a target
    normaliser must remove, and heavy tails.

    Attributes:
        n_train, n_val, n_test: Split sizes.
        in_features: Input dimension.
        num_classes: Classes of the class task.
        offset, scale, tail_df, tail_noise, tiny, junk_scale: See
            :class:`~lossrag.bench.data.synthetic.OffsetScaleInstance`.
    """

    can_stream = True
    unscored = ("junk",)

    family: Literal["offset-scale"] = "offset-scale"
    budget: Budget = Budget(epochs=30, batch_size=128)
    hidden: tuple[PositiveInt, ...] = (128, 128)
    n_train: PositiveInt = 12000
    n_val: PositiveInt = 2000
    n_test: PositiveInt = 4000
    in_features: PositiveInt = 20
    num_classes: int = Field(default=5, ge=2)
    offset: float = 1e3
    scale: PositiveFloat = 1e2
    tail_df: float = Field(default=3.0, gt=2.0)
    tail_noise: float = Field(default=0.3, ge=0.0)
    tiny: PositiveFloat = 1e-3
    junk_scale: PositiveFloat = 1.0

    @property
    def in_dim(self) -> int:
        """``in_features`` (20)."""
        return self.in_features

    def _make_tasks(self) -> list[Task]:
        return [
            Task("heavy", kind="regression", metric="mae"),
            Task("tiny", kind="regression", metric="mae"),
            Task("class", kind="classification", num_classes=self.num_classes),
            Task("junk", kind="regression", metric="mae"),
        ]

    def instance(self, seed: int) -> OffsetScaleInstance:
        """The teachers and constants of ``seed``'s instance."""
        return make_offset_scale_instance(
            self.rng(seed),
            in_dim=self.in_features,
            num_classes=self.num_classes,
            offset=self.offset,
            scale=self.scale,
            tail_df=self.tail_df,
            tail_noise=self.tail_noise,
            tiny=self.tiny,
            junk_scale=self.junk_scale,
        )

    @staticmethod
    def _split(
        instance: OffsetScaleInstance, n: int, rng: np.random.Generator, noisy: bool
    ) -> Split:
        x, y = instance.sample(n, rng, noisy=noisy)
        return Split(torch.from_numpy(x), {k: torch.from_numpy(v) for k, v in y.items()})

    def load(self, seed: int) -> Splits:
        """Draw the instance, then noisy training and validation splits and a clean test split;
        ``sampler`` streams noisy training samples."""
        instance = self.instance(seed)
        data = np.random.default_rng([seed, 1, *self.family.encode()])

        def sampler(n: int, generator: torch.Generator) -> Split:
            fresh = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
            return self._split(instance, n, fresh, True)

        return Splits(
            self._split(instance, self.n_train, data, True),
            self._split(instance, self.n_val, data, True),
            self._split(instance, self.n_test, data, False),
            sampler,
        )


@register_problem(
    "offset-scale",
    description="heavy-tailed regression offset 1e3 (t3 noise) + 1e-3-scale regression + class "
    "+ junk; raw units",
)
def offset_scale() -> OffsetScaleProblem:
    """The default ``offset-scale`` problem."""
    return OffsetScaleProblem()
