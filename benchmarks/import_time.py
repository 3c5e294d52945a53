"""Start-up time: ``import torch`` against ``import lossrag``, the composer's import and
``lossrag --help``, each in a fresh interpreter.

The commands are interleaved (one of each per repetition, in a rotating order), so that a load
change on a shared machine hits every command alike. Prints the median and the best wall time of
each and its ratio to ``import torch`` (targets: ``import lossrag`` at most 1.3× ``import torch``,
``lossrag --help`` under 1.5 s)::

    python benchmarks/import_time.py --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

#: Label -> the command, run with this interpreter.
COMMANDS: dict[str, list[str]] = {
    "import torch": [sys.executable, "-c", "import torch"],
    "import lossrag": [sys.executable, "-c", "import lossrag"],
    "from lossrag import wrap": [sys.executable, "-c", "from lossrag import wrap"],
    "lossrag --help": [sys.executable, "-c", "from lossrag.cli import main; main()", "--help"],
}


def _time(command: list[str]) -> float:
    """Wall seconds of one run of ``command`` (its output discarded; a failure is an error)."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(repeats: int) -> dict[str, list[float]]:
    """``repeats`` wall times of every command, interleaved in a rotating order."""
    if repeats < 1:
        raise ValueError(f"import_time: repeats must be at least 1, got {repeats}.")
    labels = list(COMMANDS)
    times: dict[str, list[float]] = {label: [] for label in labels}
    _time(COMMANDS["import torch"])  # warm the file cache; not counted
    for r in range(repeats):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            times[label].append(_time(COMMANDS[label]))
    return times


def table(times: dict[str, list[float]]) -> str:
    """A Markdown table: median and best seconds, and the median's ratio to ``import torch``."""
    torch_median = statistics.median(times["import torch"])
    lines = ["| command | median s | best s | × import torch |", "| --- | --- | --- | --- |"]
    for label, values in times.items():
        median = statistics.median(values)
        lines.append(
            f"| `{label}` | {median:.3f} | {min(values):.3f} | {median / torch_median:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse ``--repeats`` and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs of each command")
    args = parser.parse_args()
    print(table(measure(args.repeats)))


if __name__ == "__main__":
    main()
