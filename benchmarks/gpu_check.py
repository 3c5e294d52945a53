"""CUDA check: every policy trains on a GPU, and the retrieval policies' per-step cost there.
Loss-based policies also train in fp16 with a ``GradScaler`` (one step forced to overflow: the
scaler skips it and the composer restores the method's state), and EW's ``composer.loss`` runs
under ``torch.cuda.set_sync_debug_mode("error")`` (no host-device synchronisation).

    python benchmarks/gpu_check.py PROBLEMS POLICIES COST_POLICIES   # writes $OUT/gpu_check.json

Each policy trains 120 steps (or an epoch) of each problem with the model and batches on CUDA
(the query stream too); the record says whether every step ran, how many were skipped and
whether the parameters stayed finite. Then each policy of COST_POLICIES and EW alternate (ABBA)
for 400 steps with a device synchronisation around each step: the median and mean step against
EW. ``benchmarks/gpu_check.json`` was measured on one H100; that machine has no faiss, so the run
used a numpy stand-in for ``faiss.IndexFlatIP`` (the index is searched on the CPU either way).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import warnings
from typing import Any

import torch

import lossrag
from lossrag.bench.jobs import Job, measure_cost, on_device, wrapped
from lossrag.bench.problems import get_problem
from lossrag.weighting import method_class


def _runs(problem: Any, policy: str, steps: int = 120) -> dict[str, Any]:
    t0 = time.perf_counter()
    splits = problem.load(0)
    model, opt, composer = wrapped(problem, splits, policy, 0, "cuda")
    done = skipped = 0
    record = None
    for x, y in on_device(problem.train_batches(splits, torch.Generator().manual_seed(0)), "cuda"):
        opt.zero_grad(set_to_none=True)
        record = composer.backward(model(x), y)
        opt.step()
        done, skipped = done + 1, skipped + record.skipped
        if done >= steps:
            break
    torch.cuda.synchronize()
    weights = record.task_weights() if record is not None else {}
    return {
        "steps": done,
        "skipped": skipped,
        "finite": all(bool(torch.isfinite(p).all()) for p in model.parameters()),
        "s": round(time.perf_counter() - t0, 2),
        "weights": {k: round(v, 3) for k, v in weights.items() if v is not None},
    }


def _fp16(problem: Any, policy: str, steps: int = 60) -> dict[str, Any]:
    """fp16 autocast with a GradScaler through ``composer.loss``; step 10 overflows."""
    splits = problem.load(0)
    model, opt, _ = wrapped(problem, splits, "ew", 0, "cuda")
    scaler = torch.amp.GradScaler("cuda")
    composer = lossrag.wrap(model, problem.tasks, policy, shared=model.trunk, seed=0, scaler=scaler)
    restored = None
    batches = on_device(problem.train_batches(splits, torch.Generator().manual_seed(0)), "cuda")
    for i, (x, y) in enumerate(batches):
        if i >= steps:
            break
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            outputs = model(x)
        loss = composer.loss(outputs, y)
        if i == 10:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if i == 11:
            record = composer.last_record
            restored = record is not None and "GradScaler" in (record.reason or "")
    sync_free = None
    if policy == "ew":
        x, y = next(iter(on_device(problem.train_batches(splits, torch.Generator()), "cuda")))
        torch.cuda.set_sync_debug_mode("error")
        try:
            composer.loss(model(x), y).backward()
            sync_free = True
        except RuntimeError:
            sync_free = False
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return {
        "restored_after_skip": restored,
        "finite": all(bool(torch.isfinite(p).all()) for p in model.parameters()),
        "ew_loss_sync_free": sync_free,
    }


def main() -> None:
    warnings.simplefilter("ignore")
    problems, policies, costed = (a.split(",") for a in sys.argv[1:4])
    out: dict[str, Any] = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "runs": {},
        "fp16": {},
        "cost": {},
    }
    for name in problems:
        problem = get_problem(name)
        for policy in policies:
            try:
                out["runs"][f"{name}/{policy}"] = _runs(problem, policy)
            except Exception:
                out["runs"][f"{name}/{policy}"] = {"error": traceback.format_exc()[-1500:]}
            print(name, policy, out["runs"][f"{name}/{policy}"], flush=True)
            if method_class(policy).kind == "loss" and not method_class(policy).needs_query:
                try:
                    out["fp16"][f"{name}/{policy}"] = _fp16(problem, policy)
                except Exception:
                    out["fp16"][f"{name}/{policy}"] = {"error": traceback.format_exc()[-1500:]}
                print(name, policy, "fp16", out["fp16"][f"{name}/{policy}"], flush=True)
        for policy in costed:
            job = Job(kind="cost", problem=name, method=policy, seed=0, steps=400)
            cost = measure_cost(job, "cuda")
            out["cost"][f"{name}/{policy}"] = {
                "ew_ms": round(cost["ew_step_ms"], 3),
                "median": round(cost["cost_ratio"], 3),
                "mean": round(cost["cost_ratio_mean"], 3),
            }
            print(name, policy, out["cost"][f"{name}/{policy}"], flush=True)
    folder = os.environ.get("OUT", ".")
    with open(os.path.join(folder, "gpu_check.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
