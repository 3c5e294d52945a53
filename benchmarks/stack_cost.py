"""Cost of the composer under the training stack (issue 14), interleaved in one process.

1. Loss path, one process: a plain summed backward (the user's own ``Σ L_i``) against
   ``composer.loss(...).backward()`` with EW, and EW against the frozen default policy, steps
   alternating ABBA on the same batches; median and mean step of each arm.
2. DDP, two gloo ranks on 127.0.0.1: a plain DDP step against the composer's step for one
   method of each family, and the floats the composer all-reduces per step beside the
   gradients DDP reduces.

Usage: ``python benchmarks/stack_cost.py [--steps 300] [--out benchmarks/stack]``; one thread
per process. Writes ``cost.json`` and ``cost.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import lossrag
from lossrag.bench.problems import get_problem
from lossrag.losses import registry
from lossrag.tasks import NATURAL_LOSS

PROBLEMS = ["digits-mtl", "mnist1d-mtl", "gradnorm-synth-t10", "multifashion"]
DDP_METHODS = ["ew", "famo", "lossrag-default", "gradnorm", "mgda", "pcgrad", "nashmtl"]

Step = Callable[[torch.Tensor, dict[str, torch.Tensor]], None]


def _plain(model: torch.nn.Module, tasks: list[lossrag.Task]) -> Step:
    losses = {
        t.name: registry.create(t.loss or NATURAL_LOSS[t.kind], **t.loss_params) for t in tasks
    }

    def step(x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
        out = model(x)
        torch.stack([losses[n](out[n], y[n]).mean() for n in losses]).sum().backward()

    return step


def _arm(problem: Any, seed: int, kind: str) -> tuple[torch.optim.Optimizer, Step]:
    torch.manual_seed(seed)
    model = problem.build_model(seed)
    opt = torch.optim.Adam(model.parameters(), lr=problem.budget.lr)
    if kind == "plain":
        return opt, _plain(model, problem.tasks)
    policy, path = kind.split(":")
    composer = lossrag.wrap(model, problem.tasks, policy, shared=model.trunk, seed=seed)
    if path == "loss":
        return opt, lambda x, y: composer.loss(model(x), y).backward()
    return opt, lambda x, y: composer.backward(model(x), y)


def interleaved(problem_name: str, kinds: list[str], steps: int, seed: int = 0) -> dict[str, Any]:
    """Median and mean step time of each arm, the arms alternating in ABBA order."""
    problem = get_problem(problem_name)
    arms = [_arm(problem, seed, k) for k in kinds]
    times = time_arms(problem, arms, steps, seed)
    return {
        k: {"median_ms": statistics.median(t) * 1e3, "mean_ms": statistics.fmean(t) * 1e3}
        for k, t in zip(kinds, times, strict=True)
    }


def time_arms(
    problem: Any,
    arms: list[tuple[torch.optim.Optimizer, Step]],
    steps: int,
    seed: int = 0,
    warmup: int = 10,
) -> list[list[float]]:
    """Per arm, the times (seconds) of ``steps`` steps after ``warmup``: every step runs each
    arm once on the same batch (zero_grad, the arm's step, the optimizer's step), the order
    alternating (ABBA) so that no arm gains from going first."""
    splits = problem.load(seed)
    times: list[list[float]] = [[] for _ in arms]
    order, done = torch.Generator().manual_seed(seed), 0
    while done < steps + warmup:
        for x, y in problem.train_batches(splits, order):
            sequence = range(len(arms)) if done % 2 == 0 else reversed(range(len(arms)))
            for i in sequence:
                opt, step = arms[i]
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                step(x, y)
                opt.step()
                if done >= warmup:
                    times[i].append(time.perf_counter() - t0)
            done += 1
            if done >= steps + warmup:
                break
    return times


def _ddp_rank(rank: int, port: int, steps: int, out: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=120))
    problem = get_problem("mnist1d-mtl")
    splits = problem.load(0)
    results = {}
    for method in DDP_METHODS:
        arms = []
        for kind in ("plain", method):
            torch.manual_seed(0)
            model = problem.build_model(0)
            net = DistributedDataParallel(model)
            opt = torch.optim.Adam(model.parameters(), lr=problem.budget.lr)
            composer = None
            if kind == "plain":
                step = _plain(net, problem.tasks)
            else:
                composer = lossrag.wrap(net, problem.tasks, method, shared=model.trunk, seed=0)
                c = composer
                step = (
                    (lambda x, y, c=c, net=net: c.backward(net(x), y))
                    if c.method.kind == "gradient"
                    else (lambda x, y, c=c, net=net: c.loss(net(x), y).backward())
                )
            arms.append((opt, step, composer, sum(p.numel() for p in model.parameters())))
        times: list[list[float]] = [[], []]
        order, done = torch.Generator().manual_seed(0), 0
        while done < steps + 5:
            for x, y in problem.train_batches(splits, order):
                half = slice(rank * (len(x) // 2), (rank + 1) * (len(x) // 2))
                xs, ys = x[half], {k: v[half] for k, v in y.items()}
                for i in (0, 1) if done % 2 == 0 else (1, 0):
                    opt, step, _, _ = arms[i]
                    dist.barrier()
                    t0 = time.perf_counter()
                    opt.zero_grad(set_to_none=True)
                    step(xs, ys)
                    opt.step()
                    if done >= 5:
                        times[i].append(time.perf_counter() - t0)
                done += 1
                if done >= steps + 5:
                    break
        composer = arms[1][2]
        assert composer is not None
        results[method] = {
            "plain_ms": statistics.median(times[0]) * 1e3,
            "composer_ms": statistics.median(times[1]) * 1e3,
            "ratio": statistics.median(times[1]) / statistics.median(times[0]),
            "ddp_floats_per_step": arms[0][3] if composer.method.kind == "loss" else 0,
            "composer_floats_per_step": composer.sync.volume / (steps + 5),
        }
    if rank == 0:
        Path(out, "ddp.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def ddp(steps: int) -> dict[str, Any]:
    """The DDP arm: two spawned ranks, one thread each."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tempfile.mkdtemp()
    mp.spawn(_ddp_rank, args=(port, steps, out), nprocs=2, join=True)
    return json.loads(Path(out, "ddp.json").read_text())


def _ratio(r: dict[str, Any], a: str, b: str) -> str:
    """``a``'s median and mean step over ``b``'s."""
    median = r[a]["median_ms"] / r[b]["median_ms"]
    return f"{median:.3f}, {r[a]['mean_ms'] / r[b]['mean_ms']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--ddp-steps", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/stack"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    kinds = ["plain", "ew:loss", "lossrag-default:loss", "ew:backward", "lossrag-default:backward"]
    single = {}
    for name in PROBLEMS:
        single[name] = interleaved(name, kinds, args.steps)
        print(name, json.dumps(single[name]), flush=True)
    multi = ddp(args.ddp_steps)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"single": single, "ddp": multi, "torch": torch.__version__, "steps": args.steps}
    (args.out / "cost.json").write_text(json.dumps(result, indent=1))
    lines = [
        "| problem | EW `loss()` / plain Σ L | default / EW, `loss()` "
        "| default / EW, `backward()` |",
        "|---|---|---|---|",
    ]
    for name, r in single.items():
        lines.append(
            f"| {name} | {_ratio(r, 'ew:loss', 'plain')} "
            f"| {_ratio(r, 'lossrag-default:loss', 'ew:loss')} "
            f"| {_ratio(r, 'lossrag-default:backward', 'ew:backward')} |"
        )
    lines += [
        "",
        "Ratios: median step, mean step.",
        "",
        "| method (2 gloo ranks, mnist1d-mtl) | plain DDP ms | composer ms | ratio "
        "| floats DDP reduces | floats the composer all-reduces |",
        "|---|---|---|---|---|---|",
    ]
    for method, r in multi.items():
        lines.append(
            f"| {method} | {r['plain_ms']:.2f} | {r['composer_ms']:.2f} | {r['ratio']:.2f} "
            f"| {r['ddp_floats_per_step']} | {r['composer_floats_per_step']:.0f} |"
        )
    (args.out / "cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
