"""Reference multi-task models: a shared trunk with one head per task."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lossrag.tasks import Task

__all__ = ["MultiTaskMLP", "head_size", "mlp_trunk"]


def mlp_trunk(in_dim: int, hidden: Sequence[int]) -> nn.Sequential:
    """``Flatten`` then ``Linear + ReLU`` per width in ``hidden``: the shared trunk of the reference
    models."""
    if not hidden:
        raise ValueError("mlp_trunk: `hidden` needs at least one layer width.")
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers)


def head_size(task: Task, regression_dim: int = 1) -> int:
    """Number of outputs a head needs for ``task`` (``regression_dim`` for regression tasks)."""
    if task.kind in ("classification", "multilabel"):
        return int(task.num_classes or 0)
    return regression_dim


class MultiTaskMLP(nn.Module):
    """A ReLU MLP trunk (``.trunk``, the ``shared`` part) and one linear head per task.

    Regression heads with one output are squeezed to ``(B,)``; representation tasks have no head.

    Args:
        in_dim: Input features (inputs are flattened from the second dimension on).
        hidden: Widths of the trunk's hidden layers.
        tasks: The tasks; one head each, except representation tasks.
        regression_dims: Output width per regression task name (default 1, giving ``(B,)``).

    >>> import torch
    >>> from lossrag import Task
    >>> m = MultiTaskMLP(8, [16], [Task("y", kind="regression")])
    >>> m(torch.zeros(4, 8))["y"].shape
    torch.Size([4])
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        tasks: Sequence[Task],
        regression_dims: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.trunk = mlp_trunk(in_dim, hidden)
        width = hidden[-1]
        dims = regression_dims or {}
        self.heads = nn.ModuleDict(
            {
                t.name: nn.Linear(width, head_size(t, dims.get(t.name, 1)))
                for t in tasks
                if t.kind != "representation"
            }
        )
        self._scalar = {t.name for t in tasks if t.kind == "regression"}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Return ``{task name: output}``."""
        z = self.trunk(x)
        out = {}
        for name, head in self.heads.items():
            y = head(z)
            out[name] = y.squeeze(-1) if name in self._scalar and y.shape[-1] == 1 else y
        return out
