"""Two-process CPU DDP run of :class:`lossrag.integrations.lightning.LossRAGModule` (gloo,
127.0.0.1), launched by ``tests/test_integrations.py`` as ``python tests/_lightning_ddp.py OUT``.

Lightning's ``strategy="ddp"`` launcher re-runs this script for rank 1, as it would a user's
training script. Each rank fits a loss-based method (FAMO, automatic optimisation, with
``accumulate_grad_batches=2``) and a gradient-based one (MGDA, manual optimisation) for a few
steps on its half of each global batch and saves its parameters, the method's state and the
last record in ``OUT/<policy>-rank<r>.pt``.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import lightning
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, Dataset

import lossrag
from lossrag.integrations.lightning import LossRAGModule
from lossrag.models import MultiTaskMLP

TASKS = [
    lossrag.Task("digit", kind="classification", num_classes=4),
    lossrag.Task("ink", kind="regression", metric="mae"),
]
POLICIES = {"famo": 2, "mgda": 1}  # policy -> Trainer(accumulate_grad_batches=...)
STEPS = 3


class Synthetic(Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    """A fixed data set, the same in every process."""

    def __init__(self, n: int = 96) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 12, generator=g)
        self.digit = torch.randint(0, 4, (n,), generator=g)
        self.ink = self.x.mean(1) + 2.0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.x[i], {"digit": self.digit[i], "ink": self.ink[i]}


class Recording(LossRAGModule):
    """Keeps the sum of each rank's first input batch (the ranks must see different data)."""

    first_batch: float | None = None

    def training_step(self, batch: object, batch_idx: int) -> torch.Tensor | None:
        if self.first_batch is None:
            x, _ = self.split_batch(batch)
            self.first_batch = float(x.sum())
        return super().training_step(batch, batch_idx)


def fit(policy: str, accumulate: int, out: Path) -> None:
    torch.manual_seed(0)
    model = MultiTaskMLP(12, [16, 8], TASKS)
    initial = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    module = Recording(model, TASKS, policy, shared=model.trunk, lr=1e-2, seed=0)
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=60)),
        max_steps=STEPS,
        accumulate_grad_batches=accumulate,
        log_every_n_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(Synthetic(), batch_size=8, shuffle=False)
    trainer.fit(module, loader)
    record = module.composer.last_record
    assert record is not None
    torch.save(
        {
            "rank": trainer.global_rank,
            "world": trainer.world_size,
            "initial": initial,
            "params": torch.cat([p.detach().reshape(-1) for p in model.parameters()]),
            "method": module.composer.state_dict()["method"],
            "step": module.composer.step,
            "global_step": trainer.global_step,
            "weights": record.task_weights(),
            "first_batch": module.first_batch,
        },
        out / f"{policy}-rank{trainer.global_rank}.pt",
    )


def main(out: Path) -> None:
    torch.set_num_threads(1)
    for policy, accumulate in POLICIES.items():
        fit(policy, accumulate, out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
