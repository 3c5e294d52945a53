"""``multifashion``, ``multifashion4`` and ``multifashion-noisy``: pairs of overlapping
Fashion-MNIST items."""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from pydantic import Field, PositiveInt

from lossrag.bench.data.corrupt import flip_labels
from lossrag.bench.data.fashion import MultiFashion, load_fashion_mnist, make_multifashion
from lossrag.bench.problems.base import Budget, Problem, Split, Splits, register_problem
from lossrag.tasks import Task

__all__ = ["MultiFashionProblem"]


def _split(pairs: MultiFashion, unmix: bool) -> Split:
    y = {"left": torch.from_numpy(pairs.left), "right": torch.from_numpy(pairs.right)}
    if unmix:
        y["left_image"] = torch.from_numpy(pairs.left_image)
        y["right_image"] = torch.from_numpy(pairs.right_image)
    return Split(torch.from_numpy(pairs.x), y)


class MultiFashionProblem(Problem):
    """36×36 images of two overlapping Fashion-MNIST items -> class of the left and right item.

    With ``unmix=True`` (``multifashion4``) two more tasks reconstruct each item alone at 14×14
    (MSE on 196 pixels in ``[0, 1]``). Training and validation pairs are drawn from disjoint parts
    of the Fashion-MNIST training images (``val_pool`` images kept for validation), test pairs
    from its test images.

    With ``label_noise > 0`` (``multifashion-noisy``) that share of the right item's labels in
    the training and validation pairs is replaced by another class drawn uniformly (symmetric
    label noise, :func:`~lossrag.bench.data.corrupt.flip_labels`); the test labels stay clean.

    Attributes:
        n_train, n_val, n_test: Number of pairs per split.
        val_pool: Fashion training images reserved for validation pairs.
        unmix: Add the two un-mixing tasks.
        label_noise: Share of flipped ``right`` labels in training and validation.
    """

    family: Literal["multifashion"] = "multifashion"
    budget: Budget = Budget(epochs=10, batch_size=256)
    hidden: tuple[PositiveInt, ...] = (512, 256)
    n_train: PositiveInt = 30000
    n_val: PositiveInt = 5000
    n_test: PositiveInt = 10000
    val_pool: int = Field(default=10000, ge=1)
    unmix: bool = False
    label_noise: float = Field(default=0.0, ge=0.0, le=1.0)

    @property
    def in_dim(self) -> int:
        """36 × 36 pixels."""
        return 36 * 36

    def _make_tasks(self) -> list[Task]:
        tasks = [
            Task("left", kind="classification", num_classes=10),
            Task("right", kind="classification", num_classes=10),
        ]
        if self.unmix:
            tasks += [
                Task("left_image", kind="regression", metric="mse"),
                Task("right_image", kind="regression", metric="mse"),
            ]
        return tasks

    def regression_dims(self) -> dict[str, int]:
        """The un-mixing heads output 14 × 14 pixels."""
        return {"left_image": 196, "right_image": 196} if self.unmix else {}

    def load(self, seed: int) -> Splits:
        """Compose the pairs from ``seed``.

        Raises:
            MissingDataError: Fashion-MNIST is not installed (says how to install it).
        """
        train_images, train_labels = load_fashion_mnist("train")
        test_images, test_labels = load_fashion_mnist("test")
        if self.val_pool >= len(train_images):
            raise ValueError(
                f"Problem {self.name!r}: val_pool={self.val_pool} leaves no training images "
                f"(Fashion-MNIST has {len(train_images)})."
            )
        cut = len(train_images) - self.val_pool
        rng = self.rng(seed)
        parts = [
            make_multifashion(train_images[:cut], train_labels[:cut], self.n_train, rng),
            make_multifashion(train_images[cut:], train_labels[cut:], self.n_val, rng),
            make_multifashion(test_images, test_labels, self.n_test, rng),
        ]
        if self.label_noise > 0:
            parts[:2] = [
                dataclasses.replace(p, right=flip_labels(p.right, self.label_noise, 10, rng))
                for p in parts[:2]
            ]
        train, val, test = (_split(p, self.unmix) for p in parts)
        return Splits(train, val, test)


@register_problem(
    "multifashion",
    description="two overlapping Fashion-MNIST items: left and right class (CE)",
    source="apt: dataset-fashion-mnist",
)
def multifashion() -> MultiFashionProblem:
    """The 2-task MultiFashion problem."""
    return MultiFashionProblem()


@register_problem(
    "multifashion4",
    description="multifashion plus 14×14 un-mixing of each item (MSE): CE + MSE mix",
    source="apt: dataset-fashion-mnist",
)
def multifashion4() -> MultiFashionProblem:
    """MultiFashion with the two un-mixing tasks."""
    return MultiFashionProblem(unmix=True)


@register_problem(
    "multifashion-noisy",
    description="multifashion, smaller, with 40 % symmetric label noise on the right item in "
    "training and validation; clean test",
    source="apt: dataset-fashion-mnist",
)
def multifashion_noisy() -> MultiFashionProblem:
    """MultiFashion on 6,000 training pairs, 40 % of the right labels flipped; 30 epochs, long
    enough for cross-entropy to fit the flipped labels."""
    return MultiFashionProblem(
        n_train=6000,
        n_val=4000,
        n_test=5000,
        hidden=(256, 128),
        budget=Budget(epochs=30, batch_size=128),
        label_noise=0.4,
    )
