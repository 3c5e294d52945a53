"""Offline meta-training: generated problems, recipes, policy folders, train/resume, loading."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import lossrag
from lossrag.cli import app
from lossrag.policy import LossRAG
from lossrag.policy.store import (
    load_policy,
    policy_folder,
    read_card,
    record_benchmarks,
    save_policy,
)
from lossrag.train import (
    PARAMS,
    Distribution,
    initial_parameters,
    load_recipe,
    policy_from,
    policy_values,
    sample_problem,
    shipped_recipes,
    train,
)
from lossrag.train import es as es_module

TINY = """
name = "tiny"
description = "test recipe"
seed = 3
workers = 1

[problems]
tasks = [2, 3]
n_train = [64, 96]
in_features = [4, 6]
hidden = [16]
depth = [1, 1]
steps = [8, 12]

[es]
generations = 2
population = 2
eval_every = 1
eval_problems = 2

[online]
rounds = 2
"""


def _recipe(tmp_path, text=TINY):
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def test_generated_problems_are_reproducible_and_span_the_distribution():
    dist = Distribution()
    a, b = sample_problem(dist, 5), sample_problem(dist, 5)
    assert a == b
    problems = [sample_problem(dist, s) for s in range(60)]
    sizes = [len(p.specs) for p in problems]
    assert min(sizes) >= 2 and max(sizes) <= 40 and max(sizes) - min(sizes) > 20
    specs = [s for p in problems for s in p.specs]
    assert {s.kind for s in specs} == {"regression", "classification"}
    assert any(s.junk for s in specs) and {s.relation for s in specs} >= {"duplicate", "conflict"}
    scales = [s.log10_scale for s in specs if s.kind == "regression"]
    assert min(scales) < -1.5 and max(scales) > 1.5  # loss scales s² over 10⁻⁴…10⁴
    for p in problems[:5]:
        assert p.scored and all(not p.specs[int(n[1:])].junk for n in p.scored)
    splits = a.load(0)
    again = a.load(0)
    torch.testing.assert_close(splits.train.x, again.train.x)
    assert not torch.equal(splits.train.x, a.load(1).train.x)


def test_generated_corruption_is_drawn_only_where_the_recipe_has_it():
    """Gross errors (train and validation; the test split clean), heavy tails, offsets and
    MAE-scored tasks; a distribution without them draws exactly the problems it drew before
    they existed (digests of the specs of problems 0-9 and of the training and validation data
    of problems 0-2 as drawn then)."""
    import hashlib

    plain = [sample_problem(Distribution(), s) for s in range(10)]
    fields = [
        tuple(
            (x.kind, x.classes, x.log10_scale, x.noise, x.junk, x.source, x.relation)
            for x in p.specs
        )
        for p in plain
    ]
    assert hashlib.sha256(repr(fields).encode()).hexdigest()[:16] == "5665d203c58883b3"
    assert all(x.outliers == 0 and x.tail is None and x.offset == 0 for p in plain for x in p.specs)
    data = hashlib.sha256()  # their training and validation data, as drawn then too
    for p in plain[:3]:
        splits = p.load(0)
        for split in (splits.train, splits.val):  # rounded: BLAS may differ in the last bits
            for values in (split.x, *(split.y[name] for name in sorted(split.y))):
                data.update(np.round(values.double().numpy(), 3).tobytes())
    assert data.hexdigest()[:16] == "fc2ea029492d9a57"
    metrics = {(t.kind, t.metric) for p in plain for t in p.tasks}
    assert metrics == {("regression", "mse"), ("classification", "accuracy")}

    def first_regression(dist):
        found = (sample_problem(dist, s) for s in range(50))
        return next(p for p in found if p.specs[0].kind == "regression")

    tailed = first_regression(Distribution(heavy_tail=1.0)).specs[0]
    assert tailed.tail is not None and 1.5 <= tailed.tail <= 5
    problem = first_regression(Distribution(outliers=1.0, offset=(5.0, 10.0), mae=1.0, junk=0))
    spec = problem.specs[0]
    assert 0.05 <= spec.outliers <= 0.2 and spec.tail is None and 5 <= abs(spec.offset) <= 10
    assert problem.tasks[0].metric == "mae"
    splits = problem.load(0)
    scale = 10.0**spec.log10_scale
    for split, dirty in ((splits.train, True), (splits.val, True), (splits.test, False)):
        z = (split.y["t0"] / scale - spec.offset).numpy()
        gross = float((np.abs(z - np.median(z)) > 8).mean())  # noise and signal stay within ~5
        assert (gross > 0) == dirty, gross


def test_generated_label_noise_and_long_tails():
    """Flipped labels in training and validation only (the test split clean, the random stream
    as before, so train and validation are as they were drawn); one long-tailed task per
    problem, its tail in every split, scored by macro-F1 where drawn; specs checked."""
    from lossrag.train.generate import TaskSpec

    dist = Distribution(classification=1.0, junk=0, duplicate=0, conflict=0, label_flip=(0, 0))
    problem = sample_problem(dist, 3)
    flipped = problem.model_copy(
        update={"specs": tuple(s.model_copy(update={"noise": 0.5}) for s in problem.specs)}
    )
    clean, noisy = problem.load(0), flipped.load(0)
    for i, _ in enumerate(problem.specs):
        name = f"t{i}"
        torch.testing.assert_close(noisy.test.y[name], clean.test.y[name])
        share = float((noisy.train.y[name] != clean.train.y[name]).float().mean())
        assert 0.2 < share < 0.5, share  # 0.5·(K−1)/K of the labels change
    tailed = Distribution(
        classification=1.0, junk=0, imbalance=1.0, imbalance_ratio=(40, 40), f1=1.0
    )
    found = [sample_problem(tailed, s) for s in range(8)]
    assert all(sum(s.imbalance > 1 for s in p.specs) == 1 for p in found)
    assert all(t.metric == "f1" for p in found for t in p.tasks)
    p = next(p for p in found if p.specs[0].imbalance > 1 and p.specs[0].classes >= 6)
    splits = p.load(0)
    for split in (splits.train, splits.test):
        counts = np.bincount(split.y["t0"].numpy(), minlength=p.specs[0].classes)
        assert len(split.x) == (p.n_train if split is splits.train else p.n_test)
        assert counts[0] > 5 * counts[-1], counts  # as drawn the classes are roughly even
    even = p.model_copy(update={"tail_in_test": False}).load(0)
    torch.testing.assert_close(even.train.y["t0"], splits.train.y["t0"])
    counts = np.bincount(even.test.y["t0"].numpy(), minlength=p.specs[0].classes)
    assert counts[0] < 5 * counts[-1], counts
    two = (p.specs[0], p.specs[0].model_copy(update={"classes": 3}))
    with pytest.raises(ValueError, match="tasks t0, t1 are long-tailed; at most one task may be"):
        type(p)(**{**p.model_dump(), "specs": two})
    with pytest.raises(ValueError, match="a regression task is scored by mse or mae, not 'f1'"):
        TaskSpec(kind="regression", metric="f1")
    with pytest.raises(ValueError, match="imbalance applies to classification tasks"):
        TaskSpec(kind="regression", imbalance=3.0)


def test_recipe_errors_name_the_field(tmp_path):
    recipe = load_recipe(_recipe(tmp_path))
    assert recipe.es.generations == 2 and recipe.problems.tasks == (2, 3)
    with pytest.raises(
        ValueError, match=r"es\.populaton: unknown field; did you mean 'population'"
    ):
        load_recipe(_recipe(tmp_path, TINY.replace("population = 2", "populaton = 2")))
    with pytest.raises(ValueError, match=r"toml: onlin: unknown field; did you mean 'online'\?$"):
        load_recipe(_recipe(tmp_path, TINY.replace("[online]", "[onlin]")))
    with pytest.raises(ValueError, match=r"toml: problems\.tasks: the range 5\.\.3 is empty\.$"):
        load_recipe(_recipe(tmp_path, TINY.replace("tasks = [2, 3]", "tasks = [5, 3]")))
    with pytest.raises(ValueError, match=r"es\.sigma: Input should be greater than 0"):
        load_recipe(_recipe(tmp_path, TINY.replace("[es]", "[es]\nsigma = -1")))
    with pytest.raises(ValueError, match=r"es\.clip: Input should be a finite number"):
        load_recipe(_recipe(tmp_path, TINY.replace("[es]", "[es]\nclip = inf")))
    with pytest.raises(ValueError, match=r"online\.step: Input should be less than or equal to 1"):
        load_recipe(_recipe(tmp_path, TINY.replace("[online]", "[online]\nstep = 2")))
    edited = load_recipe(_recipe(tmp_path, TINY.replace("rounds = 2", "rounds = 3")))
    assert edited.es_digest == recipe.es_digest and edited.digest != recipe.digest
    with pytest.raises(ValueError, match="not valid TOML"):
        load_recipe(_recipe(tmp_path, "name = "))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_recipe(tmp_path / "missing.toml")
    # a shipped recipe by its name, from any folder; a mistyped one is named
    assert load_recipe("quick").name == "quick" and "quick" in shipped_recipes()
    with pytest.raises(FileNotFoundError, match=r"shipped recipe's name: .*did you mean 'quick'"):
        load_recipe("quik")


def test_policy_folder_round_trip_and_integrity(tmp_path, digits):
    theta = initial_parameters() + 0.3
    policy = policy_from(theta)
    torch.manual_seed(0)
    for p in policy.correction.parameters():
        torch.nn.init.normal_(p, std=0.1)
    folder = tmp_path / "mine"
    card = save_policy(policy, folder, description="d", training={"problems": 1})
    assert card.name == "mine" and set(card.checksums) == {"policy.json", "correction.npz"}
    loaded = load_policy(folder)
    assert loaded.prior == policy.prior and loaded.temperature == pytest.approx(policy.temperature)
    assert loaded.floor == pytest.approx(policy.floor)
    for a, b in zip(loaded.correction.parameters(), policy.correction.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert sum(f.stat().st_size for f in folder.iterdir()) < 100_000
    record_benchmarks(folder, {"digits-mtl": {"delta_m": 1.5}})
    assert read_card(folder).benchmarks == {"digits-mtl": {"delta_m": 1.5}}
    model = digits.model(0)
    composer = lossrag.wrap(model, digits.tasks, str(folder), shared=model.trunk)
    assert composer.policy_name == "mine"
    assert composer.policy_version == card.checksums["policy.json"][:12]
    # loaded first and passed as an object: recorded by its card too (it was "lossrag"), and
    # a state saved under that name still loads; changed settings make it another policy
    as_object = lossrag.wrap(model, digits.tasks, load_policy(folder), shared=model.trunk)
    x, y = digits.batch(0)
    record = as_object.backward(model(x), y)
    assert (record.method, record.version) == ("mine", card.checksums["policy.json"][:12])
    state = as_object.state_dict()
    as_object.load_state_dict({**state, "policy": "lossrag"})
    changed = lossrag.wrap(model, digits.tasks, load_policy(folder, k=3), shared=model.trunk)
    assert changed.policy_name == "mine (k changed)" and changed.policy_version is None

    altered = tmp_path / "altered"
    shutil.copytree(folder, altered)
    settings = json.loads((altered / "policy.json").read_text())
    settings["temperature"] = 9.0
    (altered / "policy.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=r"policy\.json does not match the checksum"):
        load_policy(altered)
    (altered / "policy.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"policy\.json is missing"):
        read_card(altered)
    # a broken card names what is wrong in one line (it gave pydantic's whole report)
    (altered / "card.json").write_text("{ broken")
    with pytest.raises(ValueError, match=r"not a valid card \(the file: Invalid JSON[^\n]*\)\.$"):
        read_card(altered)
    (altered / "card.json").write_text(json.dumps({**card.model_dump(), "name": None}))
    with pytest.raises(ValueError, match=r"not a valid card \(name: Input should be a valid str"):
        read_card(altered)

    old = tmp_path / "old"
    shutil.copytree(folder, old)
    card_data = json.loads((old / "card.json").read_text())
    card_data.update(format=0, lossrag_version="0.0.1")
    (old / "card.json").write_text(json.dumps(card_data))
    with pytest.raises(
        ValueError, match=r"LossRAG 0\.0\.1 as policy format 0.*reads policy format 1 or 2"
    ):
        load_policy(old)
    with pytest.raises(FileNotFoundError, match="neither a folder nor a shipped policy"):
        lossrag.wrap(digits.model(0), digits.tasks, "./no/such/policy")


def test_train_writes_a_loadable_policy_and_resumes_exactly(tmp_path, monkeypatch):
    recipe = load_recipe(_recipe(tmp_path))
    quiet = Console(quiet=True)
    full = train(recipe, tmp_path / "full", tmp_path / "work-full", console=quiet)
    assert full["problems"] == 4 and len(full["objective"]) == 3
    assert all(np.isfinite(o["log_ratio_vs_ew"]) for o in full["objective"])
    card = read_card(tmp_path / "full")
    assert {"meta_objective.png", "log.jsonl"} <= set(card.checksums)
    assert card.name == card.recipe["name"] == "tiny" and card.recipe_hash == recipe.digest
    trained = load_policy(tmp_path / "full")
    values = policy_values(
        json.loads((tmp_path / "work-full" / "checkpoint.json").read_text())["theta"]
    )
    assert trained.temperature == pytest.approx(values[PARAMS.index("temperature")])
    # the online phase: two Reptile rounds moved Δφ; it ships only if it beat the prior alone
    online = full["online"]
    assert online["round"] == 2 and len(online["drift"]) == 2 and online["drift"][0] > 0
    gain = online["with_correction"] - online["prior_only"]
    assert online["shipped"] == (gain > 2 * online["gain_se"])  # beyond the held-out noise
    last = trained.correction.rho[-1].weight
    assert bool(last.abs().sum() > 0) == online["shipped"]  # Δφ = 0 starts at a zero last layer

    # interrupted in the ES and in the online phase, resumed each time: the same policy
    original = es_module._Checkpoint.save
    cuts = iter([(1, 0), (2, 0), (2, 1)])  # (generation, online round) after which to stop
    cut = next(cuts)

    def save_then_stop(self, state):
        nonlocal cut
        original(self, state)
        if (state["generation"], state.get("online", {}).get("round", 0)) == cut:
            cut = next(cuts, None)
            raise KeyboardInterrupt

    monkeypatch.setattr(es_module._Checkpoint, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "cut", tmp_path / "work-cut", console=quiet)
    with pytest.raises(ValueError, match=r"unfinished run \(generation 1 of 2, writing .*cut\)"):
        train(recipe, tmp_path / "cut", tmp_path / "work-cut", console=quiet)
    torch.manual_seed(11)  # each resume is a new process, with its own RNG state
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "cut", tmp_path / "work-cut", resume=True, console=quiet)
    # generation 2 logged and saved; a corrupt checkpoint falls back to the previous one
    # (generation 1): generation 2 is done again, and logged once
    work = tmp_path / "work-cut"
    (work / "checkpoint.json").write_text("{")
    torch.manual_seed(12)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "cut", tmp_path / "work-cut", resume=True, console=quiet)
    torch.manual_seed(13)
    resumed = train(recipe, tmp_path / "cut", tmp_path / "work-cut", resume=True, console=quiet)
    assert cut is None
    log = (work / "log.jsonl").read_text()
    assert log == (tmp_path / "work-full" / "log.jsonl").read_text() and log.count("\n") == 3
    assert resumed["parameters"] == full["parameters"]
    assert resumed["objective"] == full["objective"]
    timeless = [{k: v for k, v in r["online"].items() if k != "elapsed_s"} for r in (resumed, full)]
    assert timeless[0] == timeless[1]
    again = load_policy(tmp_path / "cut").correction.state_dict()
    for name, value in trained.correction.state_dict().items():  # a resume in the online phase
        torch.testing.assert_close(again[name], value, rtol=0, atol=0)  # drew them unseeded
    assert full["reference"] == resumed["reference"] == es_module.REFERENCE


def _stopped_after_generation_1(recipe, tmp_path, monkeypatch) -> None:
    """Train ``recipe`` into ``cut`` (work folder ``work-cut``) until its first generation is
    saved, then stop it as Ctrl-C would."""
    original = es_module._Checkpoint.save

    def stop_after_the_first_generation(self, state):
        original(self, state)
        if state["generation"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(es_module._Checkpoint, "save", stop_after_the_first_generation)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "cut", tmp_path / "work-cut", console=Console(quiet=True))
    monkeypatch.setattr(es_module._Checkpoint, "save", original)


@pytest.mark.parametrize(
    ("corrected", "ships"),
    [
        ([0.52, 0.51, 0.53, 0.52], True),  # a small gain on every problem
        ([0.50, 0.50, 0.50, 0.60], False),  # one problem's: within the noise (mean +0.025)
        ([0.49, 0.51, 0.49, 0.51], False),  # no gain
        ([0.70], False),  # one problem never tells
        ([0.52, 0.52, 0.52, 0.52], True),  # the same gain everywhere: standard error 0
        ([0.50, 0.50, 0.50, 0.50], False),  # no gain anywhere, standard error 0
        ([0.6, 0.6, 0.6, float("nan")], False),  # a non-finite objective says nothing
    ],
)
def test_the_correction_ships_only_on_a_gain_beyond_the_held_out_noise(corrected, ships):
    """Paired over the held-out problems, the mean gain must exceed twice its standard error
    (a plain comparison of the two means would ship the second case)."""
    alone = [0.5] * len(corrected)
    se, shipped = es_module.correction_gain(alone, corrected)
    gains = np.subtract(corrected, alone)
    assert shipped is ships
    if len(gains) < 2 or not np.isfinite(gains).all():
        assert se is None
    else:
        assert se == pytest.approx(gains.std(ddof=1) / np.sqrt(len(gains)), abs=1e-15)


@pytest.mark.skipif(sys.platform == "win32", reason="work folders are locked on POSIX only")
def test_train_refuses_a_work_folder_another_run_is_using(tmp_path):
    recipe, work, quiet = load_recipe(_recipe(tmp_path)), tmp_path / "work", Console(quiet=True)
    work.mkdir()
    other = es_module._WorkLock(work)
    other.take()
    try:
        with pytest.raises(BlockingIOError, match=rf"run \(process {os.getpid()}\) is using"):
            train(recipe, tmp_path / "p", work, console=quiet)
        assert not (tmp_path / "p").exists() and os.listdir(work) == [es_module.LOCK_FILE]
    finally:
        other.release()
    (work / "checkpoint.json").write_text("{}")
    with pytest.raises(ValueError, match="holds the checkpoint of an unfinished run"):
        train(recipe, tmp_path / "p", work, console=quiet)
    again = es_module._WorkLock(work)  # the failed run let go of the folder
    again.take()
    again.release()
    with pytest.raises(ValueError, match="is inside --out"):  # checked before any lock
        train(recipe, tmp_path / "q", tmp_path / "q", console=quiet)
    assert not (tmp_path / "q").exists()
    (tmp_path / "q").mkdir()
    with pytest.raises(ValueError, match="is inside --out"):
        train(recipe, tmp_path / "q", tmp_path / "q", console=quiet)
    assert os.listdir(tmp_path / "q") == []


def test_train_says_what_a_work_folder_holds_and_continues_a_longer_run(tmp_path):
    """A finished run is not offered a resume; a run is continued only into its own policy
    folder (a symbolic link to it is that folder); a policy already at --out is replaced only
    with replace=True; a resume with another recipe names what changed, and a longer ES phase
    continues the shorter one exactly, its old end no longer evaluated off the schedule."""
    quiet = Console(quiet=True)
    every2 = TINY.replace("eval_every = 1", "eval_every = 2")
    recipe = load_recipe(_recipe(tmp_path, every2.replace("generations = 2", "generations = 3")))
    train(recipe, tmp_path / "p", tmp_path / "work", console=quiet)
    # the finished run is said first: --force alone would not get past it (a user trial was
    # told to pass --force, then refused for the finished run)
    with pytest.raises(ValueError, match=r"holds a finished run, writing .*p; pass another --work"):
        train(recipe, tmp_path / "p", tmp_path / "work", console=quiet)
    with pytest.raises(FileExistsError, match=r"--out .*p holds the policy 'tiny'; pass --force"):
        train(recipe, tmp_path / "p", tmp_path / "work-2", console=quiet)
    with pytest.raises(ValueError, match=r"holds a finished run, writing .*p; pass another --work"):
        train(recipe, tmp_path / "q", tmp_path / "work", console=quiet)
    assert not (tmp_path / "q").exists()
    with pytest.raises(ValueError, match=r"is the run writing .*p, not .*q; continue it with"):
        train(recipe, tmp_path / "q", tmp_path / "work", resume=True, console=quiet)
    other = load_recipe(_recipe(tmp_path, every2.replace("population = 2", "population = 3")))
    with pytest.raises(ValueError, match=r"another recipe \(es\.generations 3 -> 2; es\.popu"):
        train(other, tmp_path / "p", tmp_path / "work", resume=True, replace=True, console=quiet)
    (tmp_path / "link").symlink_to(tmp_path)
    longer = load_recipe(_recipe(tmp_path, every2.replace("generations = 2", "generations = 4")))
    console = Console(record=True, width=200)
    extended = train(
        longer,
        tmp_path / "link" / "p",
        tmp_path / "work",
        resume=True,
        replace=True,
        console=console,
    )
    assert "continuing with es.generations 3 -> 4" in console.export_text()
    fresh = train(longer, tmp_path / "fresh", tmp_path / "work-fresh", console=quiet)
    assert [o["generation"] for o in fresh["objective"]] == [0, 2, 4]
    assert extended["parameters"] == fresh["parameters"]
    assert extended["objective"] == fresh["objective"] and extended["runs"] == fresh["runs"]
    assert (tmp_path / "work" / "log.jsonl").read_text() == (
        tmp_path / "work-fresh" / "log.jsonl"
    ).read_text()
    assert read_card(tmp_path / "p").recipe["es"]["generations"] == 4


def test_a_run_resumed_where_a_shorter_recipe_ends_is_evaluated_there(tmp_path, monkeypatch):
    """Stopped after generation 1 of 2 and resumed as a 1-generation run, the ES phase ends at
    once: its last generation is evaluated as a fresh 1-generation run's is. And the correction
    that does not ship (no online phase) is the fresh run's: its hidden layers (its last layer
    is zero) were drawn from whatever state the RNG was in when the policy was written, another
    one after a resume (found by a user trial)."""
    quiet = Console(quiet=True)
    every2 = TINY.replace("eval_every = 1", "eval_every = 2").replace("rounds = 2", "rounds = 0")
    _stopped_after_generation_1(load_recipe(_recipe(tmp_path, every2)), tmp_path, monkeypatch)
    state = json.loads((tmp_path / "work-cut" / "checkpoint.json").read_text())
    assert "objective" not in state["history"][-1]  # generation 1 is off the schedule of 2
    shorter = load_recipe(_recipe(tmp_path, every2.replace("generations = 2", "generations = 1")))
    torch.manual_seed(11)  # each run a process of its own, its RNG in another state
    resumed = train(shorter, tmp_path / "cut", tmp_path / "work-cut", resume=True, console=quiet)
    torch.manual_seed(12)
    fresh = train(shorter, tmp_path / "fresh", tmp_path / "work-fresh", console=quiet)
    assert [o["generation"] for o in resumed["objective"]] == [0, 1]
    assert resumed["objective"] == fresh["objective"]
    assert resumed["parameters"] == fresh["parameters"]
    assert (tmp_path / "fresh" / "correction.npz").read_bytes() == (
        tmp_path / "cut" / "correction.npz"
    ).read_bytes()


def _state(generation: int) -> dict[str, object]:
    """A trainer's state after ``generation`` generations, as a checkpoint holds it."""
    zeros = [0.0] * len(PARAMS)
    return {
        "generation": generation,
        "theta": zeros,
        "m": zeros,
        "v": zeros,
        "history": [],
        "baseline": {},
        "elapsed_s": 1.0,
    }


def test_a_perturbation_past_a_floor_bound_still_makes_a_policy():
    """ES may carry a floor's log-parameter past 0 (a share above 1): the floor is then the
    highest share below 1 (no evidence passes it), not a crash that every resume repeats
    (found by a user trial at es.sigma = 1.5)."""
    theta = initial_parameters()
    for name in ("gross_floor", "label_floor"):
        theta[PARAMS.index(name)] = 0.7  # e^0.7 = 2
    prior = policy_from(theta).prior
    assert 0.999 < prior.gross_floor < 1 and 0.999 < prior.label_floor < 1
    assert policy_from(initial_parameters()).prior.gross_floor == pytest.approx(0.02)


def test_a_checkpoint_of_the_wrong_shape_is_refused_and_the_previous_one_used(tmp_path):
    """Valid JSON that is not a checkpoint (found by a user trial: a traceback) is refused as
    corrupt; the resume says it starts from the previous checkpoint and which generation."""
    recipe = load_recipe(_recipe(tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    checkpoint = es_module._Checkpoint(work, recipe, "code", tmp_path / "p")
    checkpoint.save(_state(generation=1))
    checkpoint.save(_state(generation=2))
    for bad in ("null", "[1]", '{"format": 1, "generation": "2"}'):
        good = json.loads((work / "checkpoint.json").read_text())
        for key, value in (("generation", "2"), ("theta", ["x"])):
            (work / "checkpoint.json").write_text(json.dumps({**good, key: value}))
            console = Console(record=True, width=300)
            assert checkpoint.load(console)["generation"] == 1
            said = console.export_text()
            assert f"{key} missing or not a" in said and "previous checkpoint" in said
        (work / "checkpoint.json").write_text(bad)
        console = Console(record=True, width=300)
        assert checkpoint.load(console)["generation"] == 1
        assert "resuming from the previous checkpoint" in console.export_text()
        (work / "checkpoint.json").write_text(json.dumps(good))


def test_checkpoints_of_older_code_are_said_for_what_they_are(tmp_path):
    """A checkpoint without the fields this code records (the recipe's ES part, the policy
    folder, "finished"): its finished online phase tells a finished run, and another recipe is
    refused without naming fields it cannot know; one left only as the previous checkpoint
    still protects its run."""
    recipe = load_recipe(_recipe(tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    old = {
        "format": 1,
        "recipe": recipe.es_digest,
        **_state(generation=2),
        "online": {"round": 2, "with_correction": 0.1},
    }
    (work / "checkpoint.prev.json").write_text(json.dumps(old))
    checkpoint = es_module._Checkpoint(work, recipe, "code", tmp_path / "p")
    with pytest.raises(ValueError, match=r"holds a finished run; pass another --work"):
        checkpoint.refuse_start()
    del old["online"]
    (work / "checkpoint.prev.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"unfinished run \(generation 2\); pass --resume"):
        checkpoint.refuse_start()
    longer = load_recipe(_recipe(tmp_path, TINY.replace("generations = 2", "generations = 3")))
    with pytest.raises(ValueError, match=r"did not record which fields it had: it resumes only"):
        es_module._Checkpoint(work, longer, "code", tmp_path / "p").load(Console(quiet=True))
    (work / "checkpoint.prev.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"unfinished run \(generation \?\)"):
        checkpoint.refuse_start()


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    recipe = load_recipe(_recipe(tmp_path))
    checkpoint = es_module._Checkpoint(work, recipe, "code1", tmp_path / "p")
    state = _state(generation=1)
    checkpoint.save(state)
    checkpoint.save(dict(state, generation=2))
    (work / "checkpoint.json").write_text('{"format": 1, "recipe": "abc", "gen')
    console = Console(record=True, width=200)
    loaded = checkpoint.load(console)
    assert loaded is not None and loaded["generation"] == 1
    assert "corrupt" in console.export_text()
    other = load_recipe(_recipe(tmp_path, TINY.replace("seed = 3", "seed = 4")))
    with pytest.raises(
        ValueError,
        match=r"another recipe \(seed 3 -> 4\); only es.generations can change on --resume \(to "
        r"no fewer than the 1 done\)\. Use another --work folder for this one, or remove that",
    ):
        es_module._Checkpoint(work, other, "code1", tmp_path / "p").load(console)
    # a resume across a code change is said; one with other trained parameters is refused
    es_module._Checkpoint(work, recipe, "code2", tmp_path / "p").load(console)
    assert "code change (code1 -> code2)" in console.export_text()
    saved = json.loads((work / "checkpoint.prev.json").read_text())
    saved["params"] = saved["params"][:-1]
    (work / "checkpoint.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"holds the parameters learn, .*Start over"):
        checkpoint.load(console)
    del saved["params"], saved["code"]  # written before the names were: judged by its size
    (work / "checkpoint.json").write_text(json.dumps(saved))
    assert checkpoint.load(console) is not None
    saved.update(theta=saved["theta"][:-1], m=saved["m"][:-1], v=saved["v"][:-1])
    (work / "checkpoint.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=rf"holds the parameters {len(PARAMS) - 1} values"):
        checkpoint.load(console)


def _rewrite(folder: Path, name: str, data: bytes) -> None:
    """Replace a policy folder's file, its card's checksum with it (it passes the check)."""
    (folder / name).write_bytes(data)
    card = json.loads((folder / "card.json").read_text())
    card["checksums"][name] = hashlib.sha256(data).hexdigest()
    (folder / "card.json").write_text(json.dumps(card))


def test_policy_settings_round_trip_and_target_normalisation(tmp_path, digits, monkeypatch):
    """A saved policy keeps every gate setting and the target normalisation it was trained
    with; the shipped default trains the same loaded by name or by folder (a Path too)."""
    policy = LossRAG(patience_on=3, spread=2.0, normalize_targets="auto")
    save_policy(policy, tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    assert (loaded.gates.patience_on, loaded.gates.spread) == (3, 2.0)
    assert loaded.normalize_targets == "auto"
    assert policy_from(initial_parameters()).normalize_targets == "auto"  # as `lossrag train`
    model = digits.model(0)
    shipped = policy_folder("default")
    for source in ("default", str(shipped), Path(shipped)):
        composer = lossrag.wrap(model, digits.tasks, source, shared=model.trunk)
        assert composer.method.normalize_targets == "auto", source
    with pytest.raises(ValueError, match="normalize_targets must be True, False or 'auto'"):
        LossRAG(normalize_targets="yes")  # type: ignore[arg-type]
    monkeypatch.chdir(tmp_path)  # a Path is a folder, even one named like a method
    save_policy(LossRAG(), "famo")
    composer = lossrag.wrap(model, digits.tasks, Path("famo"), shared=model.trunk)
    assert type(composer.method) is LossRAG and composer.policy_name == "famo"
    with pytest.raises(FileNotFoundError, match="policy folder 'default' does not exist"):
        lossrag.wrap(model, digits.tasks, Path("default"), shared=model.trunk)
    save_policy(LossRAG(temperature=99.0), "default")  # the name still means the shipped one
    assert load_policy("default").temperature != 99.0
    assert load_policy(Path("default")).temperature == 99.0
    with pytest.raises(ValueError, match="LossRAG: need 0 <= floor < 1") as caught:
        load_policy(Path("default"), floor=2.0)  # the override is wrong, not the file
    assert "policy.json" not in str(caught.value)
    # a format-1 folder, from before the key: "auto" if `lossrag train` wrote it (a recipe),
    # else False; its other missing settings take LossRAG's defaults
    for recipe, expected in (({"name": "old"}, "auto"), ({}, False)):
        save_policy(LossRAG(patience_on=3), tmp_path / "old", recipe=recipe)
        settings = json.loads((tmp_path / "old" / "policy.json").read_text())
        for key in ("normalize_targets", "patience_on", "spread"):
            del settings[key]
        _rewrite(tmp_path / "old", "policy.json", json.dumps(settings).encode())
        card = json.loads((tmp_path / "old" / "card.json").read_text())
        (tmp_path / "old" / "card.json").write_text(json.dumps({**card, "format": 1}))
        old = load_policy(tmp_path / "old")
        assert old.normalize_targets == expected and old.gates.patience_on == 1


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("policy.json", b"{", r"policy\.json does not hold a policy's settings"),
        ("policy.json", b"[1]", r"policy\.json does not hold a policy's settings"),
        ("policy.json", b'{"correction": {"hidden": 8, "bound": 1}}', "'prior'"),
        ("correction.npz", b"\x00" * 5, r"correction\.npz is not a correction's weights"),
        ("policy.json", {"temperature": "hot"}, r"temperature: .*valid number \(got 'hot'\)"),
        ("policy.json", {"k": 4.5}, r"k: Input should be a valid integer \(got 4\.5\)"),
        ("policy.json", {"k": None}, r"k: Input should be a valid integer \(got None\)"),
        ("policy.json", {"temprature": 2.0}, r"temprature: Extra inputs are not permitted"),
        ("policy.json", {"prior": {"learn": "x"}}, r"prior\.learn: .*valid number"),
        ("policy.json", {"normalize_targets": "yes"}, r"true, false or 'auto' \(got 'yes'\)$"),
        ("policy.json", {"k": 0}, r"policy\.json do not make a LossRAG policy.*k must be >= 1"),
    ],
)
def test_a_policy_file_that_is_not_what_it_should_be_is_named(tmp_path, name, data, message):
    """Files that match their card's checksum (rewritten with it) but hold something else:
    an error naming the file and what was expected, not a bare parser error."""
    folder = tmp_path / "p"
    save_policy(LossRAG(), folder)
    if isinstance(data, dict):  # settings of the wrong type or value
        settings = json.loads((folder / name).read_text())
        data = json.dumps({**settings, **data}).encode()
    _rewrite(folder, name, data)
    with pytest.raises(ValueError, match=message):
        load_policy(folder)


def test_a_policy_that_would_not_load_again_is_refused_when_saved(tmp_path):
    """``LossRAG`` takes ``k=4.0`` and runs; its folder would fail to load (``k`` is an int):
    refused when saved, naming the argument, and nothing is written."""
    import numpy as np

    with pytest.raises(ValueError, match=r"save_policy: .*k: Input should be a valid integer"):
        save_policy(LossRAG(k=4.0), tmp_path / "p")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"save_policy: .*not plain numbers.*int64"):
        save_policy(LossRAG(max_terms=np.int64(2)), tmp_path / "p")  # type: ignore[arg-type]
    assert not (tmp_path / "p").exists()


def test_save_policy_never_replaces_what_is_not_a_policy(tmp_path):
    """A folder of other contents or a file is refused, before any training; an empty folder
    or a policy folder is written."""
    victim = tmp_path / "victim"
    (victim / "src").mkdir(parents=True)
    (victim / "data.csv").write_text("1,2\n")
    with pytest.raises(FileExistsError, match="is not a policy folder"):
        save_policy(LossRAG(), victim)
    assert (victim / "data.csv").read_text() == "1,2\n" and (victim / "src").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="a file of that name exists"):
        save_policy(LossRAG(), tmp_path / "file")
    with pytest.raises(FileExistsError, match="is not a policy folder"):
        train(
            load_recipe(_recipe(tmp_path)), victim, tmp_path / "work", console=Console(quiet=True)
        )
    assert not (tmp_path / "work").exists()
    recipe = load_recipe(_recipe(tmp_path))
    (tmp_path / "pw").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "pw")
    for work in (tmp_path / "pw" / "work", tmp_path / "alias" / "work"):
        with pytest.raises(ValueError, match="is inside --out"):
            train(recipe, tmp_path / "pw", work, console=Console(quiet=True))
    (tmp_path / "empty").mkdir()
    save_policy(LossRAG(), tmp_path / "empty")
    save_policy(LossRAG(temperature=2.0), tmp_path / "empty")  # a policy folder: replaced
    assert load_policy(tmp_path / "empty").temperature == 2.0
    # a symbolic link to a policy folder: written where it points, the link kept
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    save_policy(LossRAG(temperature=3.0), tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and load_policy(tmp_path / "empty").temperature == 3.0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    # a policy folder holding files of the user's: refused, they are kept (found by a trial)
    (tmp_path / "empty" / "notes.txt").write_text("mine")
    (tmp_path / "empty" / "evals").mkdir()
    with pytest.raises(FileExistsError, match=r"files that are not its policy's \(evals/, notes"):
        save_policy(LossRAG(), tmp_path / "empty")
    assert (tmp_path / "empty" / "notes.txt").read_text() == "mine"


def test_cli_train_and_policies_list(tmp_path):
    runner = CliRunner()
    bad = _recipe(tmp_path, TINY.replace("seed = 3", "seed = 3\ncolour = 1"))
    result = runner.invoke(app, ["train", str(bad), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "colour" in result.output
    result = runner.invoke(app, ["policies", "list"], env={"COLUMNS": "80"})
    assert result.exit_code == 0 and max(map(len, result.output.splitlines())) <= 80
    card = read_card(policy_folder("default"))
    assert f"default │ {card.version}" in result.output and "policies show NAME" in result.output


def test_cli_policies_show(tmp_path):
    """A policy's whole card, from its name or its folder, whatever layout its free-form parts
    have (an older card's, another recipe's); a folder whose files no longer match their
    checksums, or no policy at all, is an error naming it."""
    runner = CliRunner()
    card = read_card(policy_folder("default"))
    shown = runner.invoke(app, ["policies", "show", "default"], env={"COLUMNS": "80"})
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert f"version {card.version}" in text
    assert all(name in text for name in card.training["parameters"])
    assert "settings (policy.json)" in text and "normalize_targets auto" in text
    # its meta-objective was measured against EW on raw targets, and the card says so
    assert "against EW on raw targets (the card predates the reference's target" in text
    for suite, result in card.benchmarks.items():
        assert f"benchmarks › {suite} › lossrag-default › delta_m" in text
        assert all(f"{p} {v:.4g}" in text for p, v in result["lossrag-default"]["delta_m"].items())
    assert max(map(len, shown.output.splitlines())) <= 80
    copy = tmp_path / "mine"
    shutil.copytree(policy_folder("default"), copy)
    other = json.loads((copy / "card.json").read_text())
    other["description"] = "[experimental] scores by MAE"  # not markup
    other["benchmarks"] = {"digits-mtl": {"delta_m": 1.5}, "note": "by hand", "runs": [1, 2]}
    other["training"] = {
        "objective": [0.1, 0.25],
        "parameters": {"kind": "fixed", "lr": 0.5},
        "reference": "EW with targets normalised",
        "elapsed_s": 40.0,
        "workers": 1,
        # a near tie told apart (it read "+0.0206 without it, +0.0206 with it")
        "online": {
            "rounds": 2,
            "prior_only": 0.020585,
            "with_correction": 0.020562,
            "gain_se": 0.0011,
        },
    }
    (copy / "card.json").write_text(json.dumps(other))
    shown = runner.invoke(app, ["policies", "show", str(copy)], env={"COLUMNS": "80"})
    text = " ".join(shown.output.split())
    assert shown.exit_code == 0, shown.output
    assert "[experimental] scores by MAE" in text and "+0.1000 -> +0.2500 over 2" in text
    assert "against EW with targets normalised, on held-out problems; higher is better)" in text
    assert "time 40 s on 1 worker " in text and "fell" not in text
    said = "+0.020585 without it, +0.020562 with it (standard error of the gain 0.0011)"
    assert said + ": does not ship" in text
    other["training"]["objective"] = [0.25, 0.1]
    (copy / "card.json").write_text(json.dumps(other))
    shown = runner.invoke(app, ["policies", "show", str(copy)], env={"COLUMNS": "80"})
    assert "higher is better; it fell during training)" in " ".join(shown.output.split())
    assert "benchmarks › digits-mtl delta_m 1.5" in text and "runs 1, 2" in text
    assert "kind fixed lr 0.5" in text
    policy = copy / "policy.json"
    policy.write_text(policy.read_text().replace("{", "{ ", 1))
    altered = runner.invoke(app, ["policies", "show", str(copy)])
    said = " ".join(altered.output.split())
    assert altered.exit_code == 2 and "policy.json does not match the checksum" in said
    missing = runner.invoke(app, ["policies", "show", "defualt"])
    said = " ".join(missing.output.split())
    assert missing.exit_code == 2 and "neither a folder nor a shipped policy" in said


def test_cli_train_interrupted_says_how_to_go_on(tmp_path, monkeypatch):
    """With a checkpoint: the command that resumes it; before the first one: the command that
    starts again (it said "--resume (from the last checkpoint)" with none, found by a trial)."""
    import lossrag.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lossrag.train, "train", interrupted)
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, TINY)
    result = CliRunner().invoke(app, ["train", str(recipe), "--out", "p", "--force"])
    said = " ".join(result.output.split())
    assert result.exit_code == 130
    assert "interrupted before the first checkpoint: start again with lossrag train" in said
    assert "--work lossrag-train/p --force" in said and "--resume" not in said
    (tmp_path / "lossrag-train" / "p").mkdir(parents=True)
    (tmp_path / "lossrag-train" / "p" / "checkpoint.prev.json").write_text("{}")
    result = CliRunner().invoke(app, ["train", str(recipe), "--out", "p"])
    said = " ".join(result.output.split())
    assert "continue with lossrag train" in said and "--resume (from the last checkpoint)" in said


@pytest.mark.parametrize("end", [0.50, 0.60])
def test_cli_train_says_when_the_held_out_objective_fell(tmp_path, monkeypatch, end):
    """A policy whose held-out meta-objective fell during training is written with a warning
    saying so (a user trial's small recipe fell at every evaluation, silently)."""
    import lossrag.train

    summary = {
        "problems": 4,
        "elapsed_s": 1.0,
        "objective": [
            {"generation": 0, "log_ratio_vs_ew": 0.55},
            {"generation": 2, "log_ratio_vs_ew": end},
        ],
        "online": {"rounds": 0},
        "reference": "EW with targets normalised",
    }
    monkeypatch.setattr(lossrag.train, "train", lambda *args, **kwargs: summary)
    recipe = _recipe(tmp_path, TINY)
    result = CliRunner().invoke(app, ["train", str(recipe), "--out", str(tmp_path / "p")])
    assert result.exit_code == 0
    said = " ".join(result.output.split())
    assert ("objective fell (+0.5500 at the start, +0.5000 now)" in said) == (end < 0.55)
    assert "(log-ratio against EW with targets normalised, on held-out problems" in said
    # the tiny recipe's runs (8 to 12 steps) never reach a gate move: said before training
    assert "problems.steps [8, 12]: hardly a run goes past step 200" in said
    for steps, warned in (("[150, 200]", True), ("[150, 250]", False)):
        recipe = _recipe(tmp_path, TINY.replace("steps = [8, 12]", f"steps = {steps}"))
        result = CliRunner().invoke(app, ["train", str(recipe), "--out", str(tmp_path / "q")])
        assert result.exit_code == 0 and ("hardly a run" in result.output) == warned
    # an online phase: the held-out check with the gain's standard error
    online = {"rounds": 2, "problems": 4, "prior_only": 0.5, "with_correction": 0.52}
    summary["online"] = online | {"gain_se": 0.004, "shipped": True}
    result = CliRunner().invoke(app, ["train", str(recipe), "--out", str(tmp_path / "o")])
    said = " ".join(result.output.split())
    assert "+0.5000 (standard error of the gain 0.004): the correction ships" in said


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (Linux ``/proc``)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _stops_with_its_workers(command: list[str], cwd: Path, signum: int, wait: float) -> str:
    """Start ``command``, wait for its pool workers, send ``signum`` to it alone (not to its
    process group, as Ctrl-C in a terminal would): it and its workers must be gone within
    ``wait`` seconds. Nothing is left behind either way. Returns what it printed."""
    printed = cwd / "stdout.txt"
    with printed.open("w") as out:  # SIGINT as in a terminal, even where this run ignores it
        process = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=out,
            env=os.environ | {"COLUMNS": "200"},
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while not workers and time.monotonic() < deadline:
            time.sleep(0.2)
            workers = _children(process.pid)
        assert workers, "no worker started"
        time.sleep(2.0)
        process.send_signal(signum)
        process.wait(timeout=wait)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = [w for w in workers if Path(f"/proc/{w}").exists()]
        assert not alive, f"workers {alive} outlived {command[1:3]}"
    finally:
        for pid in [process.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return printed.read_text()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux /proc")
def test_kill_int_stops_a_benchmark_before_its_queued_jobs(tmp_path):
    """``kill -INT`` stops ``lossrag bench run`` and its workers at once: without the handler
    the pool ran every queued job first (about a minute here; found by a user trial, where a
    bigger run seemed to hang). It says how to continue (it printed nothing, found by a user
    trial)."""
    script = Path(sys.executable).parent / "lossrag"
    command = [str(script), "bench", "run", "--problems", "digits-mtl"]
    command += ["--methods", "ew,uw,dwa,famo,rlw,mgda", "--seeds", "5", "--jobs", "2"]
    out = tmp_path / "b"
    said = _stops_with_its_workers([*command, "--out", str(out)], tmp_path, signal.SIGINT, 20)
    assert f"continue with lossrag bench resume --out {out} --jobs 2" in " ".join(said.split())


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_kill_stops_lossrag_train_and_its_workers(tmp_path, signum):
    """``kill`` or ``kill -INT`` stops ``lossrag train``: its pool workers go too, instead of
    waiting for work forever; it says how to continue."""
    recipe = _recipe(tmp_path, TINY.replace("generations = 2", "generations = 500"))
    script = Path(sys.executable).parent / "lossrag"
    command = [str(script), "train", str(recipe), "--out", str(tmp_path / "p")]
    command += ["--work", str(tmp_path / "w")]
    said = " ".join(_stops_with_its_workers(command, tmp_path, signum, 30).split())
    again = f"lossrag train {recipe} --out {tmp_path / 'p'} --work {tmp_path / 'w'}"
    if (tmp_path / "w" / "checkpoint.json").exists():  # stopped after its first generation
        assert f"interrupted: continue with {again} --resume (from the last checkpoint)" in said
    else:
        assert f"interrupted before the first checkpoint: start again with {again}" in said


@pytest.mark.parametrize(("curve", "zero_line"), [((0.547, 0.568), False), ((-0.01, 0.02), True)])
def test_the_meta_objective_plot_fits_its_curve(tmp_path, monkeypatch, curve, zero_line):
    """EW's level (0) is drawn only where the curve comes near it: a line at 0 flattened the
    shipped policy's curve, 0.547 -> 0.568 (found by a user trial)."""
    from matplotlib.axes import Axes

    drawn: list[float] = []
    original = Axes.axhline

    def axhline(ax: Axes, y: float = 0, *args: object, **kwargs: object) -> object:
        drawn.append(y)
        return original(ax, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "axhline", axhline)
    es_module._plot(list(enumerate(curve)), tmp_path / "m.png")
    assert (drawn == [0.0]) == zero_line and (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
