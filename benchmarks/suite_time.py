"""How long a benchmark suite takes on N workers, from the per-job times its runs recorded.

    python benchmarks/suite_time.py benchmarks/protocol benchmarks/toy2d [--workers 2]

Each output folder's jobs are taken in the order ``lossrag bench`` submits them and given to the
first free worker (the runner's process pool does the same); a job's time is its process CPU time
(``cpu_s``, one thread), or its elapsed time where no CPU time was recorded (cost jobs). A job
that an earlier folder already holds (runs copied between folders, as ``benchmarks/full5`` holds
``benchmarks/full``'s seeds 0-2) is counted once, in the first.
"""

from __future__ import annotations

import argparse
import heapq
import json
from pathlib import Path

from lossrag.bench.runner import BenchConfig, plan


def job_times(out: Path, counted: set[str]) -> tuple[list[float], int]:
    """Recorded seconds of the jobs of ``out`` not in ``counted``, in submission order, and how
    many are missing; adds the keys it counts to ``counted``."""
    config = BenchConfig.model_validate_json((out / "config.json").read_text())
    times, missing = [], 0
    for job in plan(config):
        if job.key in counted:
            continue
        counted.add(job.key)
        path = out / "runs" / f"{job.key}.json"
        if not path.exists():
            missing += 1
            continue
        run = json.loads(path.read_text())
        times.append(float(run.get("cpu_s") or run.get("elapsed_s") or 0.0))
    return times, missing


def makespan(times: list[float], workers: int) -> float:
    """Finish time of ``times`` handed in order to the first free of ``workers``."""
    free = [0.0] * workers
    for t in times:
        heapq.heappush(free, heapq.heappop(free) + t)
    return max(free)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outs", nargs="+", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    total_cpu = total_wall = 0.0
    counted: set[str] = set()
    for out in args.outs:
        times, missing = job_times(out, counted)
        wall = makespan(times, args.workers)
        total_cpu, total_wall = total_cpu + sum(times), total_wall + wall
        print(
            f"{out}: {len(times)} jobs ({missing} not run), {sum(times) / 3600:.2f} CPU-h, "
            f"{wall / 3600:.2f} h on {args.workers} workers"
        )
    print(
        f"suite: {total_cpu / 3600:.2f} CPU-h, {total_wall / 3600:.2f} h on {args.workers} workers"
    )


if __name__ == "__main__":
    main()
