"""Worker of the two-process DDP tests (gloo, CPU, 127.0.0.1): trains every given method for a
few steps on its half of a fixed global batch and saves each step's weights and parameters."""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
import warnings
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import lossrag
from lossrag.models import MultiTaskMLP
from lossrag.weighting import method_class

STEPS = 3
GLOBAL_BATCH = 32
TASKS = [
    lossrag.Task("digit", kind="classification", num_classes=4),
    lossrag.Task("parity", kind="classification", num_classes=2),
    lossrag.Task("ink", kind="regression", metric="mae"),
]


def batches() -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """The fixed global batches, the same in every process."""
    g = torch.Generator().manual_seed(123)
    out = []
    for _ in range(STEPS):
        x = torch.randn(GLOBAL_BATCH, 12, generator=g)
        label = torch.randint(0, 4, (GLOBAL_BATCH,), generator=g)
        out.append((x, {"digit": label, "parity": label % 2, "ink": x.mean(1) + 2.0}))
    return out


def train(method: str, rank: int = 0, world: int = 1) -> dict[str, list[torch.Tensor]]:
    """Train ``method`` for STEPS steps; with world > 1, wrapped in DDP on this rank's half."""
    torch.manual_seed(0)
    model = MultiTaskMLP(12, [16, 8], TASKS)
    net = DistributedDataParallel(model) if world > 1 else model
    per = GLOBAL_BATCH // world
    options = {}
    if method_class(method).needs_query:  # each rank's half of a held-out batch
        x, y = batches()[-1]
        part = slice(rank * per, (rank + 1) * per)
        options = {"query": [(x[part] + 0.1, {k: v[part] for k, v in y.items()})], "meta_every": 1}
    composer = lossrag.wrap(net, TASKS, method, shared=model.trunk, seed=0, **options)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    weights, params, losses = [], [], []
    for x, y in batches():
        xs, ys = (
            x[rank * per : (rank + 1) * per],
            {k: v[rank * per : (rank + 1) * per] for k, v in y.items()},
        )
        opt.zero_grad()
        if composer.method.kind == "gradient":
            record = composer.backward(net(xs), ys)
        else:
            composer.loss(net(xs), ys).backward()
            record = composer.last_record
        assert record is not None and not record.skipped, (method, record)
        w = [t.weight if t.weight is not None else float("nan") for t in record.terms if t.active]
        weights.append(torch.tensor(w, dtype=torch.float64))
        losses.append(torch.tensor([record.losses[t.name] for t in TASKS], dtype=torch.float64))
        opt.step()
        params.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone())
    composer.close()
    return {"weights": weights, "params": params, "losses": losses}


def run(rank: int, world: int, port: int, methods: list[str], out: str) -> None:
    """Entry point of one spawned rank: every method, then the two failure cases."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        results = {m: train(m, rank, world) for m in methods}
        torch.save(results, Path(out) / f"rank{rank}.pt")
        mismatch(rank, out)
        mismatch_loss(rank, out)
        mismatch_loss(rank, out, params={"delta": 1.0})
        non_finite(rank, out)
        unwritable_trace(rank, out)
        # tear down in step: the DDP modules left by the cases above go while the group lives,
        # and neither rank closes its connections while the other still talks (a rank aborted
        # in gloo's teardown, after writing every result, in 3 of about 30 runs under load)
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # every result is on disk: leave without the interpreter's finalisation, where gloo's worker
    # threads can still release tensors after Python is gone and abort the process (SIGABRT,
    # "terminate called without an active exception"; pytorch/pytorch pull 179291 describes it)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def mismatch(rank: int, out: str) -> None:
    """Rank 1 lists the tasks in another order and picks another policy: every rank must raise
    a clear error at the first step (not hang)."""
    tasks = TASKS if rank == 0 else TASKS[::-1]
    message = _first_step(tasks, "famo" if rank == 0 else "uw")
    Path(out, f"mismatch{rank}.txt").write_text(message)


def mismatch_loss(rank: int, out: str, params: dict[str, float] | None = None) -> None:
    """Rank 1 gives a task another loss (a user trial's ranks trained different losses
    silently): every rank must raise at the first step. With ``params``, both ranks use Huber,
    rank 1 with ``params`` (its defaults written out: the same loss, no error)."""
    tasks = list(TASKS)
    huber = lossrag.Task("ink", kind="regression", metric="mae", loss="huber")
    if params is not None:
        tasks[2] = huber
    if rank == 1:
        tasks[2] = huber if params is None else dataclasses.replace(huber, loss_params=params)
    message = _first_step(tasks, "ew")
    Path(out, f"mismatch_loss{rank}{'' if params is None else '_same'}.txt").write_text(message)


def _first_step(tasks: list[lossrag.Task], policy: str) -> str:
    """The error of this rank's first DDP step with ``tasks`` and ``policy``, or "no error"."""
    torch.manual_seed(0)
    model = MultiTaskMLP(12, [16, 8], TASKS)
    net = DistributedDataParallel(model)
    composer = lossrag.wrap(net, tasks, policy, seed=0)
    x, y = batches()[0]
    try:
        composer.loss(net(x[:4]), {t.name: y[t.name][:4] for t in tasks}).backward()
    except ValueError as err:
        return str(err)
    return "no error"


def non_finite(rank: int, out: str) -> None:
    """Rank 1's batch has a NaN target: both ranks skip the step and keep their state."""
    torch.manual_seed(0)
    model = MultiTaskMLP(12, [16, 8], TASKS)
    net = DistributedDataParallel(model)
    composer = lossrag.wrap(net, TASKS, "uw", seed=0, trace=Path(out, "non_finite.jsonl"))
    before = composer.method.state_dict()
    x, y = batches()[0]
    y = {k: v[rank * 16 : (rank + 1) * 16].clone() for k, v in y.items()}
    if rank == 1:
        y["ink"][0] = float("nan")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        composer.loss(net(x[rank * 16 : (rank + 1) * 16]), y).backward()
    Path(out, f"non_finite_said{rank}.txt").write_text("\n".join(str(w.message) for w in said))
    record = composer.last_record
    assert record is not None
    untouched = all(p.grad is None or not bool(p.grad.any()) for p in model.parameters())
    state_same = str(before) == str(composer.method.state_dict())
    composer.close()
    Path(out, f"non_finite{rank}.txt").write_text(f"{record.skipped} {untouched} {state_same}")


def unwritable_trace(rank: int, out: str) -> None:
    """A trace path rank 0 cannot write (under a file): ``wrap`` raises on every rank, naming
    the path, instead of rank 1 waiting for rank 0 at the first step."""
    blocker = Path(out, "blocker")
    if rank == 0:
        blocker.write_text("a file, not a folder")
    dist.barrier()
    model = MultiTaskMLP(12, [16, 8], TASKS)
    try:
        lossrag.wrap(DistributedDataParallel(model), TASKS, "uw", trace=blocker / "t.jsonl")
        message = "no error"
    except ValueError as err:
        message = str(err)
    Path(out, f"unwritable{rank}.txt").write_text(message)
