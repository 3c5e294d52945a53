"""Loss-choice problems (corrupted training and validation, clean test), the loss oracle, oracle
rows and the retrieval accuracy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lossrag.bench import oracle as oracle_mod
from lossrag.bench import runner
from lossrag.bench.jobs import Job, execute
from lossrag.bench.oracle import (
    accepted_losses,
    candidates,
    choose,
    leading_loss,
    load_oracle,
    retrieval_accuracy,
    run_oracle,
)
from lossrag.bench.problems import LossChoice, get_problem
from lossrag.bench.report import markdown_table, summarise
from lossrag.bench.runner import BenchConfig, plan
from lossrag.losses import registry

SMALL = {"n_train": 600, "n_val": 300, "n_test": 300}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a, b))


def test_outliers_only_in_training_and_validation_and_deterministic() -> None:
    noisy = get_problem("mnist1d-outliers", **SMALL)
    clean = get_problem("mnist1d-outliers", outliers=0.0, **SMALL)
    a, b, c = noisy.load(0), noisy.load(0), clean.load(0)
    for name in a.train.y:
        assert _same(a.train.y[name], b.train.y[name])  # deterministic from the seed
        assert _same(a.test.y[name], c.test.y[name])  # the test split is clean
    assert _same(a.test.x, c.test.x)
    for split, reference in ((a.train, c.train), (a.val, c.val)):
        for name in ("shift", "width"):
            error = (split.y[name] - reference.y[name]).numpy()
            share = float((error != 0).mean())
            assert 0.09 < share < 0.21  # 15 % corrupted
            assert error.min() >= 0 and np.median(error[error != 0]) > 3  # gross, one-sided
        for name in ("class", "amplitude"):
            assert _same(split.y[name], reference.y[name])  # the other tasks stay clean
    assert not _same(noisy.load(1).train.y["shift"], a.train.y["shift"])


def test_imbalance_in_training_and_validation_only_and_f1_scored() -> None:
    problem = get_problem("mnist1d-imbalanced", **SMALL)
    splits = problem.load(3)
    assert problem.higher_is_better["class"] and problem.tasks[0].metric == "f1"
    for split in (splits.train, splits.val):
        counts = np.bincount(split.y["class"].numpy(), minlength=10)
        assert counts[0] > 8 * max(counts[9], 1)  # 50:1 long tail, noisy at this size
    assert (len(splits.train), len(splits.val)) == (600, 300)
    test = np.bincount(splits.test.y["class"].numpy(), minlength=10)
    assert test.max() - test.min() <= 1  # balanced
    assert _same(splits.train.x, problem.load(3).train.x)


def test_multifashion_noisy_flips_right_labels_in_training_and_validation(
    fake_fashion: Path,
) -> None:
    noisy = get_problem("multifashion-noisy", n_train=400, n_val=200, n_test=100, val_pool=100)
    clean = noisy.with_overrides(label_noise=0.0)
    a, c = noisy.load(0), clean.load(0)
    for split, reference in ((a.train, c.train), (a.val, c.val)):
        assert _same(split.y["left"], reference.y["left"])
        assert 0.3 < float((split.y["right"] != reference.y["right"]).float().mean()) < 0.5
    assert _same(a.test.y["right"], c.test.y["right"])
    assert _same(a.train.y["right"], noisy.load(0).train.y["right"])


@pytest.fixture
def fake_fashion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from test_bench_fashion import write_fake_fashion

    from lossrag.bench.data.fashion import FASHION_ENV, _load_cached

    folder = write_fake_fashion(tmp_path / "fashion")
    monkeypatch.setenv(FASHION_ENV, str(folder))
    _load_cached.cache_clear()
    yield folder
    _load_cached.cache_clear()


def test_problem_losses_replace_the_natural_loss_and_unknown_tasks_fail() -> None:
    problem = get_problem("digits-mtl", losses={"digit": {"loss": "focal", "params": {"gamma": 1}}})
    digit = next(t for t in problem.tasks if t.name == "digit")
    assert (digit.loss, digit.loss_params) == ("focal", {"gamma": 1.0})
    assert next(t for t in problem.tasks if t.name == "parity").loss == "ce"
    with pytest.raises(ValueError, match="does not have"):
        _ = get_problem("digits-mtl", losses={"nope": {"loss": "ce"}}).tasks
    with pytest.raises(ValueError, match="does not apply"):
        _ = get_problem("digits-mtl", losses={"digit": {"loss": "huber"}}).tasks


def _sweep_result(task: str, loss: str, seed: int, value: float | None) -> dict[str, Any]:
    choice = next(c for c in candidates(get_problem("digits-mtl").tasks[0]) if c.loss == loss)
    job = Job(kind="sweep", problem="digits-mtl", method="ew", seed=seed, task=task,
              losses={task: choice})  # fmt: skip
    result: dict[str, Any] = {"job": job.model_dump(), "key": job.key}
    if value is None:
        result["error"] = "RuntimeError: boom"
    else:
        result["metrics"] = {task: value}
    return result


def test_oracle_picks_the_best_seed_mean_validation_metric() -> None:
    values = {"ce": (0.80, 0.80), "focal": (0.90, 0.74), "gce": (0.83, 0.82), "sce": (0.99, None)}
    results = [
        _sweep_result("digit", loss, seed, v)
        for loss, pair in values.items()
        for seed, v in enumerate(pair)
    ]
    oracle = choose(results, [0, 1], None)
    digit = oracle.problems["digits-mtl"]["digit"]
    assert digit.chosen.id == "gce(q=0.7)"  # mean 0.825 beats focal 0.82 and ce 0.80
    assert digit.candidates["sce(alpha=0.1, beta=1)"] is None  # one seed crashed
    assert digit.candidates["ce"] == pytest.approx(0.80) and digit.natural == "ce"
    assert digit.neighbours == accepted_losses(digit.chosen, "classification")[1:]
    # ties go to the natural loss, tried first
    tied = choose([_sweep_result("digit", m, 0, 0.5) for m in ("ce", "focal")], [0], None)
    assert tied.problems["digits-mtl"]["digit"].chosen.loss == "ce"


def test_run_oracle_sweeps_every_library_loss_and_writes_oracle_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[Job] = []

    def fake_run_jobs(todo: list[Job], out: Path, *_: Any) -> list[dict[str, Any]]:
        ran.extend(todo)
        # l1 and focal score 0.6, the rest 0.5: the accuracies pick focal, the denoise MSE the
        # natural l2 (the first of the tied lowest)
        best = {"l1", "focal"}
        return [
            {
                "job": j.model_dump(),
                "key": j.key,
                "metrics": {j.task: 0.5 + 0.1 * (next(iter(j.losses.values())).loss in best)},
            }
            for j in todo
            if j.task is not None and j.losses is not None
        ]

    monkeypatch.setattr(runner, "run_jobs", fake_run_jobs)
    oracle = run_oracle(["digits-mtl"], [0], tmp_path, jobs=1)
    tasks = get_problem("digits-mtl").tasks
    assert len(ran) == sum(len(registry.list(kind=t.kind)) for t in tasks)
    assert all(j.kind == "sweep" and j.losses is not None for j in ran)
    chosen = {t: o.chosen.loss for t, o in oracle.problems["digits-mtl"].items()}
    assert chosen == {"digit": "focal", "parity": "focal", "has_loop": "focal", "denoise": "l2"}
    assert load_oracle(tmp_path / "oracle.json") == oracle
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a loss oracle"):
        load_oracle(tmp_path / "bad.json")


def test_oracle_rows_train_with_the_oracles_losses(tmp_path: Path) -> None:
    choice = {"digit": LossChoice(loss="focal"), "denoise": LossChoice(loss="l1")}
    config = BenchConfig(
        problems=["digits-mtl"],
        methods=["ew", "ew@oracle"],
        seeds=[0],
        oracle={"digits-mtl": choice},
    )
    config.validate_names()
    train = [j for j in plan(config) if j.kind == "train"]
    assert [(j.method, j.losses) for j in train] == [("ew", None), ("ew@oracle", choice)]
    assert not any(j.kind == "cost" and j.method == "ew@oracle" for j in plan(config))
    result = execute(train[1].model_copy(update={"epochs": 1}))
    assert "error" not in result, result.get("traceback")
    assert result["active_losses"]["digit"] == {"focal": 1.0}  # EW names the task's loss
    assert list(result["active_losses"]["denoise"]) == ["l1"]
    assert list(result["active_losses"]["parity"]) == ["ce"]
    with pytest.raises(ValueError, match="no problem has an oracle"):
        BenchConfig(problems=["digits-mtl"], methods=["ew@oracle"], seeds=[0]).validate_names()


def test_accepted_losses_are_the_choice_and_its_nearest_same_kind_entries() -> None:
    ids = accepted_losses(LossChoice(loss="huber", params={"delta": 1.0}), "regression")
    assert ids[0] == "huber(delta=1)" and len(set(ids)) == 4
    assert all(registry.spec(i.split("(")[0]).kinds[0] == "regression" for i in ids)


def _train(method: str, seed: int, active: dict[str, dict[str, float | None]]) -> dict[str, Any]:
    job = {"kind": "train", "problem": "digits-mtl", "method": method, "seed": seed}
    metrics = {"digit": 0.8, "parity": 0.9, "has_loop": 0.9, "denoise": 0.02}
    return {"job": job, "key": f"{method}{seed}", "metrics": metrics, "active_losses": active}


def test_retrieval_accuracy_counts_the_leading_active_loss() -> None:
    accepted = {"digits-mtl": {"digit": ["focal(gamma=2)", "ce"], "denoise": ["l1"]}}
    runs = [
        # seed 0: digit led by focal (hit), denoise by l2 (miss)
        _train("lossrag", 0, {"digit": {"ce": 0.2, "focal(gamma=2)": 0.8}, "denoise": {"l2": 1.0}}),
        # seed 1: digit led by gce (miss, though ce is active too), denoise l1 (hit)
        _train("lossrag", 1, {"digit": {"gce(q=0.7)": 0.7, "ce": 0.3}, "denoise": {"l1": None}}),
        _train("ew", 0, {}),  # records nothing: left out
    ]
    acc = retrieval_accuracy(runs, accepted)
    assert acc == {"digits-mtl|lossrag": {"hits": 2, "pairs": 4, "share": 0.5}}
    assert leading_loss({"a": None, "b": None}) == "a"
    summary = summarise([*runs, *_stl()]) | {"retrieval": acc}
    table = markdown_table({"problems": ["digits-mtl"], "methods": ["ew", "lossrag"],
                            "seeds": [0, 1]}, summary)  # fmt: skip
    header, _, ew_row, lossrag_row = table.splitlines()
    assert header.endswith("retrieval acc. |")
    assert lossrag_row.endswith("| 0.50 (2/4) |") and ew_row.endswith("| – |")


def _stl() -> list[dict[str, Any]]:
    metrics = {"digit": 0.8, "parity": 0.9, "has_loop": 0.9, "denoise": 0.02}
    return [
        {
            "job": {"kind": "stl", "problem": "digits-mtl", "method": "ew", "seed": 0, "task": t},
            "key": f"stl{t}",
            "metrics": {t: v},
        }
        for t, v in metrics.items()
    ]


def test_oracle_json_round_trips_through_bench_config(tmp_path: Path) -> None:
    oracle = choose([_sweep_result("digit", "focal", 0, 0.9)], [0], None)
    path = tmp_path / "oracle.json"
    path.write_text(oracle.model_dump_json())
    config = BenchConfig(
        problems=["digits-mtl"], methods=["ew@oracle"], seeds=[0],
        oracle=load_oracle(path).choices(),
    )  # fmt: skip
    saved = BenchConfig.model_validate(json.loads(config.model_dump_json()))
    assert saved.oracle["digits-mtl"]["digit"].id == "focal(gamma=2)"
    assert oracle_mod.base_method("lossrag-default@oracle") == "lossrag-default"
