"""Train a small two-task model with a Hugging Face ``Trainer`` weighted by LossRAG (FAMO).

No download, no hub: the model is a plain ``torch.nn.Module`` and the data are generated.
``LossRAGTrainer.compute_loss`` takes each task's target column out of the batch, runs the model
on the rest and returns ``composer.loss(outputs, targets)``.

Run: ``python examples/huggingface_trainer.py`` (needs ``pip install "lossrag[huggingface]"``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

import lossrag
from lossrag.integrations.huggingface import LossRAGTrainer
from lossrag.record import StepRecord

TASKS = [
    lossrag.Task("kind", kind="classification", num_classes=3),
    lossrag.Task("size", kind="regression", metric="mae"),
]


class TwoTaskNet(nn.Module):
    """A shared MLP trunk and one linear head per task; ``forward(x)`` returns
    ``{task: output}``."""

    def __init__(self, in_dim: int = 10, hidden: int = 32) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.kind = nn.Linear(hidden, 3)
        self.size = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.trunk(x)
        return {"kind": self.kind(z), "size": self.size(z).squeeze(-1)}


class Rows(Dataset[dict[str, Tensor]]):
    """Rows ``{"x", "kind", "size"}``: the Trainer's default collator stacks them (it renames a
    ``label`` column to ``labels``, so no task is called ``label``)."""

    def __init__(self, n: int = 512, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 10, generator=g)
        self.kind = self.x[:, :3].argmax(1)
        self.size = self.x[:, 3:6].sum(1) + 0.1 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": self.x[i], "kind": self.kind[i], "size": self.size[i]}


@dataclass
class Result:
    """The training-loss curve the Trainer logged, the composer's records and the evaluation
    loss (the unweighted sum of the task losses) on held-out rows."""

    losses: list[float]
    records: list[StepRecord]
    eval_loss: float
    steps: int  # optimizer steps the composer counted, after training and evaluation


class KeepRecords(TrainerCallback):
    """Keeps the composer's record of every optimizer step."""

    def __init__(self) -> None:
        self.trainer: LossRAGTrainer | None = None
        self.records: list[StepRecord] = []

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: object
    ) -> None:
        assert self.trainer is not None
        record = self.trainer.composer.last_record
        if record is not None:
            self.records.append(record)


def main(
    output_dir: str, max_steps: int = 40, policy: str = "famo", accumulation: int = 1
) -> Result:
    """Train for ``max_steps`` optimizer steps; return the logged losses and the records."""
    torch.manual_seed(0)
    model = TwoTaskNet()
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=32,
        gradient_accumulation_steps=accumulation,
        learning_rate=1e-2,
        logging_steps=5,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    keep = KeepRecords()
    trainer = LossRAGTrainer(
        model=model,
        args=args,
        train_dataset=Rows(),
        callbacks=[keep],
        tasks=TASKS,
        policy=policy,
        shared=model.trunk,
        wrap_options={"seed": 0},
    )
    keep.trainer = trainer
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    metrics = trainer.evaluate(Rows(128, seed=1))
    return Result(losses, keep.records, float(metrics["eval_loss"]), trainer.composer.step)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        result = main(tmp)
    print("training loss:", " ".join(f"{v:.3f}" for v in result.losses))
    print("last weights:", result.records[-1].task_weights())
    print("held-out loss (unweighted sum):", f"{result.eval_loss:.3f}")
