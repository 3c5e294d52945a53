"""Two-rank DDP on CPU (gloo, 127.0.0.1), against one process on the concatenated batch.

Loss-based methods: the composer's loss is an ordinary scalar whose gradients DDP reduces; the
losses the methods learn from are all-reduced first. Gradient-based methods: the per-task
gradients of the shared parameters are averaged across ranks before the aggregator and the
heads' gradients are averaged too, so every rank applies the same direction. The retrieval
policies refresh on the global batch (gathered from every rank). The look-ahead methods (online
adaptation, Auto-Lambda, MetaWeighting) take their meta-step on rank 0's query batch and share
it: the ranks agree bit for bit, but they do not reproduce a single process.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
import _ddp_worker as worker

from lossrag.weighting import available, method_class

METHODS = sorted(set(available()) - {"perf"})
#: Methods that adopt rank 0's look-ahead update (on its half of the query batch): the ranks
#: agree bit for bit, but the run is not the one-process run on the whole batch.
RANK0 = {"lossrag-online", "lossrag-default-online", "autolambda", "metaweighting"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(fn, tmp_path: Path, *args) -> None:
    context = mp.start_processes(
        fn, args=(2, _port(), *args, str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 240.0
    while not context.join(timeout=5.0):  # True once every rank has exited (raises on failure)
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the DDP ranks did not finish within 240 s")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _spawn(worker.run, out, METHODS)
    return torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt"), out


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(
        torch.equal(x, y) or bool(torch.isnan(x).all() and torch.isnan(y).all())
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("method", METHODS)
def test_ranks_agree_and_match_one_process(two_ranks, method):
    rank0, rank1 = two_ranks[0][method], two_ranks[1][method]
    assert _equal(rank0["weights"], rank1["weights"]), "weights differ across ranks"
    assert _equal(rank0["params"], rank1["params"]), "parameters differ across ranks"
    # the records give every rank's losses averaged (they gave each rank's own half)
    assert _equal(rank0["losses"], rank1["losses"]), "recorded losses differ across ranks"
    if method in RANK0:
        return
    single = worker.train(method)
    tol = 1e-6 if method_class(method).kind == "loss" else 1e-4
    if method == "pbi":  # float32 sums in another order: 2.0e-6 apart on one machine
        tol = 1e-5
    if method == "gradnorm":  # its weights follow gradient norms on the last shared layer
        tol = 1e-4
    for a, b in zip(rank0["params"], single["params"], strict=True):
        assert float((a - b).abs().max() / b.abs().max()) < tol
    for a, b in zip(rank0["losses"], single["losses"], strict=True):
        assert float((a - b).abs().max() / b.abs().max()) < tol
    for a, b in zip(rank0["weights"], single["weights"], strict=True):
        finite = torch.isfinite(b)
        assert torch.equal(finite, torch.isfinite(a))
        if finite.any():
            scale = b[finite].abs().max().clamp_min(1e-12)
            assert float((a[finite] - b[finite]).abs().max() / scale) < tol


def test_mismatched_tasks_are_an_error_on_every_rank(two_ranks):
    for rank in (0, 1):
        message = (two_ranks[2] / f"mismatch{rank}.txt").read_text()
        assert "configured differently" in message
        assert "policy: 'famo' vs 'uw'" in message or "policy: 'uw' vs 'famo'" in message
        assert "tasks" in message


def test_a_task_with_another_loss_on_one_rank_is_an_error_on_every_rank(two_ranks):
    for rank in (0, 1):
        message = (two_ranks[2] / f"mismatch_loss{rank}.txt").read_text()
        assert "configured differently" in message and "huber" in message, message
        # a loss setting written out at its default is the same loss
        assert (two_ranks[2] / f"mismatch_loss{rank}_same.txt").read_text() == "no error"


def test_a_trace_rank_0_cannot_write_is_an_error_on_every_rank(two_ranks):
    for rank in (0, 1):
        message = (two_ranks[2] / f"unwritable{rank}.txt").read_text()
        assert "cannot be written" in message and "blocker" in message, message
        assert message.startswith("on rank 0: ") == (rank == 1)


def test_a_non_finite_loss_on_one_rank_skips_every_rank(two_ranks):
    for rank in (0, 1):
        assert (two_ranks[2] / f"non_finite{rank}.txt").read_text() == "True True True"
        # each rank says whether its own targets hold the NaN, naming itself
        said = (two_ranks[2] / f"non_finite_said{rank}.txt").read_text()
        expected = "The targets of 'ink' hold NaN or inf in this batch on rank 1"
        assert (expected if rank else "(The targets on rank 0 are finite.)") in said, said
    # both ranks were given the trace: rank 0 alone writes it (rank 1 moved it aside before)
    assert len((two_ranks[2] / "non_finite.jsonl").read_text().splitlines()) == 1
    assert not list(two_ranks[2].glob("non_finite.jsonl.*"))
