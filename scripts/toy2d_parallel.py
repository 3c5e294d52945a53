"""Run the ``toy2d`` jobs of ``lossrag bench`` with one process per (method, start point).

``lossrag bench --problems toy2d`` runs each method's five start points in one job; the solver-based
methods (CAGrad, Nash-MTL) then take tens of minutes. This script runs the same jobs split by start
point over many cores and writes one result file per method in the bench's own format, so that
``lossrag bench --problems toy2d --resume --out DIR`` picks them up as finished.

Usage: python scripts/toy2d_parallel.py OUT_DIR STEPS [PROCESSES] [METHOD ...]
"""

from __future__ import annotations

import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path


def _one(args: tuple[str, int, int]) -> tuple[str, int, dict[str, object]]:
    import torch

    from lossrag.bench.toyrun import run_toy

    torch.set_num_threads(1)
    method, start, steps = args
    t0 = time.process_time()
    run = run_toy(method, 0, steps=steps, starts=[start])
    stride = max(1, run.trajectory.shape[1] // 200)
    return method, start, {
        "pareto_distance": run.pareto_distance.tolist(), "final": run.final.tolist(),
        "trajectory": run.trajectory[:, ::stride].tolist(), "skipped": run.skipped.tolist(),
        "cpu_s": time.process_time() - t0,
    }


def main() -> None:
    from lossrag.bench.jobs import Job
    from lossrag.bench.runner import BenchConfig, plan

    out, steps = Path(sys.argv[1]), int(sys.argv[2])
    processes = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    methods = sys.argv[4:] or "ew,uw,dwa,famo,rlw,gradnorm,mgda,pcgrad,cagrad,nashmtl,imtlg,upgrad,alignedmtl".split(",")
    config = BenchConfig(problems=["toy2d"], methods=methods, seeds=[0], toy_steps=steps)
    jobs: list[Job] = plan(config)
    work = [(j.method, s, steps) for j in jobs for s in range(5)]
    work.sort(key=lambda w: w[0] not in ("nashmtl", "cagrad", "mgda"))
    parts: dict[str, dict[int, dict[str, object]]] = {}
    with Pool(processes) as pool:
        for method, start, result in pool.imap_unordered(_one, work):
            parts.setdefault(method, {})[start] = result
            print(f"done {method} start {start} ({result['cpu_s']:.0f} s)", flush=True)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.model_dump_json(indent=2))
    for job in jobs:
        per = [parts[job.method][s] for s in range(5)]
        merged = {key: [v for p in per for v in p[key]] for key in
                  ("pareto_distance", "final", "trajectory", "skipped")}
        merged["cpu_s"] = sum(p["cpu_s"] for p in per)
        payload = {"job": job.model_dump(), "key": job.key, **merged, "elapsed_s": merged["cpu_s"]}
        (out / "runs" / f"{job.key}.json").write_text(json.dumps(payload))


if __name__ == "__main__":
    main()
