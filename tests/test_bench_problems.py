"""The problem registry and the contract of the generated and bundled problems."""

from __future__ import annotations

import math
import time

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor, nn

from lossrag.bench.data.digits import LOOP_DIGITS
from lossrag.bench.problems import (
    DigitsProblem,
    GradNormSynthProblem,
    MNIST1DProblem,
    Problem,
    Split,
    Splits,
    get_problem,
    list_problems,
    problem_card,
    register_problem,
)

ALL = [
    "digits-mtl", "gradnorm-synth-t10", "gradnorm-synth-t2", "gradnorm-synth-t40",
    "manyclass-fast", "mnist1d-imbalanced", "mnist1d-mtl", "mnist1d-noisy", "mnist1d-outliers",
    "multifashion", "multifashion4", "multifashion-noisy", "offset-scale", "qm9", "qm9-raw",
]  # fmt: skip
SMALL = {"n_train": 64, "n_val": 32, "n_test": 32}


def check_contract(problem: Problem, splits: Splits) -> None:
    """Shapes and dtypes of every split match each task's contract on a model forward."""
    model = problem.build_model(0)
    assert isinstance(model.trunk, nn.Module)
    trunk_ids = {id(p) for p in model.trunk.parameters()}
    assert trunk_ids and trunk_ids < {id(p) for p in model.parameters()}
    for split in (splits.train, splits.val, splits.test):
        assert split.x.dtype == torch.float32
        assert split.x[0].numel() == problem.in_dim
        out = model(split.x[:5])
        for task in problem.tasks:
            task.check(out[task.name], split.y[task.name][:5])
    scores = problem.evaluate(model, splits.test)
    assert list(scores) == problem.scored
    assert all(math.isfinite(v) for v in scores.values())
    assert set(problem.higher_is_better) == set(problem.scored)


def assert_splits_equal(a: Splits, b: Splits) -> None:
    for sa, sb in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert torch.equal(sa.x, sb.x)
        assert sa.y.keys() == sb.y.keys()
        assert all(torch.equal(sa.y[k], sb.y[k]) for k in sa.y)
        assert sa.metric_scale == sb.metric_scale


# ---------------------------------------------------------------- registry


def test_list_problems_and_pattern() -> None:
    assert set(ALL) <= set(list_problems())
    assert list_problems("mnist1d*") == [
        "mnist1d-imbalanced",
        "mnist1d-mtl",
        "mnist1d-noisy",
        "mnist1d-outliers",
    ]
    assert problem_card("qm9").source.startswith("pip")


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ValueError, match="Did you mean 'digits-mtl'"):
        get_problem("digit-mtl")
    with pytest.raises(ValueError, match="Toy2D"):
        get_problem("toy2d")


def test_register_user_problem_same_way() -> None:
    @register_problem("test-user-digits", description="user problem", overwrite=True)
    class UserDigits(DigitsProblem):
        noise: float = 0.0

    p = get_problem("test-user-digits")
    assert isinstance(p, UserDigits) and p.name == "test-user-digits" and p.noise == 0.0
    with pytest.raises(ValueError, match="already registered"):
        register_problem("test-user-digits")(UserDigits)


def test_overrides_are_validated_and_budget_merges() -> None:
    p = get_problem("mnist1d-mtl", n_train=500, budget={"epochs": 3})
    assert p.n_train == 500 and p.budget.epochs == 3 and p.budget.batch_size == 256
    with pytest.raises(ValidationError, match="n_trian"):
        get_problem("mnist1d-mtl", n_trian=5)
    with pytest.raises(ValidationError):
        get_problem("mnist1d-mtl", budget={"lr": -1.0})
    with pytest.raises(ValueError, match="stream"):
        get_problem("digits-mtl", stream=True)
    with pytest.raises(ValidationError):
        get_problem("digits-mtl").budget.epochs = 5  # type: ignore[misc]


def test_builtin_budgets_and_sizes() -> None:
    p = get_problem("qm9")
    assert (p.budget.epochs, p.budget.batch_size, p.budget.lr) == (20, 256, 1e-3)
    assert p.hidden == (256, 256, 256)
    assert get_problem("gradnorm-synth-t40").stream
    assert len(get_problem("gradnorm-synth-t10").tasks) == 10


# ---------------------------------------------------------------- digits


def test_digits_loads_fast_and_deterministically() -> None:
    p = get_problem("digits-mtl")
    start = time.perf_counter()
    splits = p.load(3)
    assert time.perf_counter() - start < 10
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1077, 360, 360)
    assert_splits_equal(splits, p.load(3))
    assert not torch.equal(splits.train.x, p.load(4).train.x)
    check_contract(p, splits)


def test_digits_targets_are_consistent() -> None:
    splits = get_problem("digits-mtl").load(0)
    y = splits.train.y
    assert torch.equal(y["parity"], y["digit"] % 2)
    assert torch.equal(y["has_loop"].bool(), torch.isin(y["digit"], torch.tensor(LOOP_DIGITS)))
    clean = y["denoise"]
    assert clean.shape == (1077, 64) and clean.min() >= 0 and clean.max() <= 1
    noise = splits.train.x.reshape(-1, 64) - clean
    assert noise.std().item() == pytest.approx(0.3, rel=0.05)


def test_splits_do_not_overlap() -> None:
    splits = get_problem("digits-mtl", noise=0.0).load(0)
    rows = [
        {tuple(r.tolist()) for r in s.x.reshape(len(s), -1)} for s in (splits.train, splits.test)
    ]
    # load_digits has a handful of duplicate images; disjoint indices leave almost no overlap
    assert len(rows[0] & rows[1]) < 5


# ---------------------------------------------------------------- model, batches, evaluation


def test_build_model_is_seeded_and_leaves_global_rng() -> None:
    p = get_problem("digits-mtl")
    state = torch.get_rng_state()
    a, b, c = p.build_model(1), p.build_model(1), p.build_model(2)
    assert torch.equal(state, torch.get_rng_state())
    pa, pb, pc = (torch.cat([q.flatten() for q in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_train_batches_cover_the_epoch_once() -> None:
    p = get_problem("digits-mtl", budget={"batch_size": 100})
    splits = p.load(0)
    batches = list(p.train_batches(splits, torch.Generator().manual_seed(0)))
    assert len(batches) == 11 and len(batches[-1][0]) == 77
    seen = torch.cat([x.reshape(len(x), -1) for x, _ in batches])
    assert sorted(map(tuple, seen.tolist())) == sorted(
        map(tuple, splits.train.x.reshape(1077, -1).tolist())
    )
    again = list(p.train_batches(splits, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))


class Oracle(nn.Module):
    """Returns given outputs, whatever the input (to test the metrics of ``evaluate``)."""

    def __init__(self, outputs: dict[str, Tensor]) -> None:
        super().__init__()
        self.outputs = outputs
        self.trunk = nn.Identity()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.outputs


def test_evaluate_reports_raw_units() -> None:
    p = get_problem("mnist1d-mtl", **SMALL)
    splits = p.load(0)
    test = splits.test
    perfect = {k: v.float() for k, v in test.y.items()}
    perfect["class"] = torch.nn.functional.one_hot(test.y["class"], 10).float()
    scores = p.evaluate(Oracle(perfect), test, batch_size=10**6)
    assert scores["class"] == 1.0 and scores["shift"] == 0.0 and scores["denoise"] == 0.0
    zeros = dict(perfect, shift=torch.zeros(len(test)))
    # predicting the training mean (z = 0) gives the MAE of the raw shift around that mean
    raw = test.y["shift"] * test.metric_scale["shift"]
    expected = raw.abs().mean().item()
    got = p.evaluate(Oracle(zeros), test, batch_size=10**6)["shift"]
    assert got == pytest.approx(expected, rel=1e-5)
    assert 5 < got < 20  # shift is in points (0..47), not z-units


def test_evaluate_names_missing_outputs() -> None:
    p = get_problem("digits-mtl")
    splits = p.load(0)
    with pytest.raises(ValueError, match="'digit'"):
        p.evaluate(Oracle({}), splits.test)


def test_split_rejects_mismatched_rows() -> None:
    with pytest.raises(ValueError, match="'a' has 3 rows"):
        Split(torch.zeros(4, 2), {"a": torch.zeros(3)})


# ---------------------------------------------------------------- generated problems


@pytest.mark.parametrize(
    "name",
    ["mnist1d-mtl", "mnist1d-noisy", "gradnorm-synth-t2", "offset-scale", "manyclass-fast"],
)
def test_generated_problem_contract_and_determinism(name: str) -> None:
    p = get_problem(name, **SMALL)
    splits = p.load(7)
    check_contract(p, splits)
    assert_splits_equal(splits, p.load(7))
    assert not torch.equal(splits.train.x, p.load(8).train.x)


def test_mnist1d_noisy_junk_tasks_are_trained_not_scored() -> None:
    clean = get_problem("mnist1d-mtl", n_train=4000, n_val=32, n_test=32)
    noisy = get_problem("mnist1d-noisy", n_train=4000, n_val=32, n_test=32)
    assert noisy.scored == clean.scored
    assert {"class_noisy", "shift_noisy", "noise"} <= {t.name for t in noisy.tasks}
    a, b = clean.load(0), noisy.load(0)
    assert torch.equal(a.train.x, b.train.x)  # the clean tasks are the same data
    y = b.train.y
    flipped = (y["class_noisy"] != y["class"]).float().mean().item()
    assert flipped == pytest.approx(0.5, abs=0.03)
    assert (y["shift_noisy"] - y["shift"]).std().item() == pytest.approx(3.0, rel=0.05)
    assert y["noise"].shape == (4000, 10)
    assert y["noise"].std().item() == pytest.approx(5.0, rel=0.05)
    model = noisy.build_model(0)
    assert set(noisy.evaluate(model, b.test, include_unscored=True)) == {
        t.name for t in noisy.tasks
    }


def test_streaming_gives_fresh_deterministic_batches() -> None:
    p = get_problem("gradnorm-synth-t2", **SMALL, budget={"batch_size": 16})
    assert isinstance(p, GradNormSynthProblem) and p.stream
    splits = p.load(0)
    first = list(p.train_batches(splits, torch.Generator().manual_seed(1)))
    again = list(p.train_batches(splits, torch.Generator().manual_seed(1)))
    assert len(first) == 4 and first[0][0].shape == (16, 250)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0][0], first[1][0])
    train_rows = {tuple(r) for r in splits.train.x.tolist()}
    assert not any(tuple(r) in train_rows for r in first[0][0].tolist())


def test_mnist1d_can_stream_too() -> None:
    p = get_problem("mnist1d-noisy", **SMALL, stream=True, budget={"batch_size": 32})
    assert isinstance(p, MNIST1DProblem)
    splits = p.load(0)
    x, y = next(p.train_batches(splits, torch.Generator().manual_seed(0)))
    assert x.shape == (32, 40) and set(y) == {t.name for t in p.tasks}


def test_gradnorm_metric_is_mse_over_sigma_squared() -> None:
    p = get_problem("gradnorm-synth-t10", n_train=16, n_val=16, n_test=2000)
    splits = p.load(0)
    zeros = {t.name: torch.zeros_like(splits.test.y[t.name]) for t in p.tasks}
    scores = p.evaluate(Oracle(zeros), splits.test, batch_size=10**6)
    sigmas = p.sigmas
    assert sigmas[0] == pytest.approx(1.0) and sigmas[-1] == pytest.approx(100.0)
    for i, value in enumerate(scores.values()):
        raw = splits.test.y[f"t{i}"].pow(2).mean().item()
        assert value == pytest.approx(raw / sigmas[i] ** 2, rel=1e-4)
        assert 0.8 < value < 1.0  # tanh of a wide Gaussian is mostly ±1


def test_gradnorm_noise_only_in_training() -> None:
    p = get_problem("gradnorm-synth-t2", n_train=2000, n_val=16, n_test=16, noise=[0.0, 1.0])
    splits = p.load(0)
    y = splits.train.y["t1"] / 100.0
    assert y.abs().max() > 2.0  # σ-relative noise of std 1 on top of tanh in [-1, 1]
    assert splits.test.y["t1"].abs().max() <= 100.0 + 1e-3
    with pytest.raises(ValueError, match="one per task"):
        get_problem("gradnorm-synth-t2", noise=[1.0])


def test_problem_config_union_parses_each_family() -> None:
    from pydantic import TypeAdapter

    from lossrag.bench.problems import ProblemConfig, QM9Problem

    adapter = TypeAdapter(ProblemConfig)
    parsed = adapter.validate_python(
        {"family": "qm9", "raw": True, "budget": {"epochs": 2, "batch_size": 8}}
    )
    assert isinstance(parsed, QM9Problem) and parsed.raw and parsed.budget.epochs == 2
    assert isinstance(adapter.validate_python({"family": "mnist1d"}), MNIST1DProblem)
    with pytest.raises(ValidationError, match="family"):
        adapter.validate_python({"family": "cifar"})
    for name in ALL:
        p = get_problem(name)
        assert adapter.validate_python(p.model_dump()) == p


# ---------------------------------------------------------------- offset-scale, manyclass-fast


def test_offset_scale_targets_have_the_promised_scales() -> None:
    p = get_problem("offset-scale", n_train=20000, n_val=32, n_test=4000)
    assert p.scored == ["heavy", "tiny", "class"] and p.unscored == ("junk",)
    assert p.higher_is_better == {"heavy": False, "tiny": False, "class": True}
    splits = p.load(0)
    train, test = splits.train.y, splits.test.y
    assert train["heavy"].shape == (20000,) and train["class"].dtype == torch.int64
    assert train["heavy"].mean().item() == pytest.approx(1000.0, abs=5.0)
    assert test["heavy"].std().item() == pytest.approx(100.0, rel=0.1)
    assert test["tiny"].std().item() == pytest.approx(1e-3, rel=0.1)
    assert train["junk"].std().item() == pytest.approx(1.0, rel=0.05)
    pair = torch.stack([train["junk"], train["heavy"]])
    assert abs(torch.corrcoef(pair)[0, 1].item()) < 0.05  # junk is independent of the input
    # Student-t noise (ν = 3) in training only: heavy tails there, none in the clean test split
    clean = p.instance(0)
    g0 = torch.from_numpy(clean.regress(splits.train.x.double().numpy())[:, 0])
    residual = train["heavy"].double() - (1000.0 + 100.0 * g0)
    assert residual.std().item() == pytest.approx(30.0 * 3**0.5, rel=0.3)  # 0.3·100·t₃ (var 3)
    kurtosis = (residual - residual.mean()).pow(4).mean() / residual.var() ** 2
    assert kurtosis.item() > 6.0  # a Gaussian has 3
    exact = 1000.0 + 100.0 * clean.regress(splits.test.x.double().numpy())[:, 0]
    assert torch.allclose(test["heavy"].double(), torch.from_numpy(exact), atol=1e-3)
    counts = torch.bincount(train["class"], minlength=5)
    assert (counts > 500).all()  # every class is common


def test_manyclass_fast_shapes_and_near_deterministic_regressions() -> None:
    p = get_problem("manyclass-fast", n_train=8000, n_val=32, n_test=32)
    assert p.scored == ["class", "r0", "r1", "r2"]
    splits = p.load(1)
    x, y = splits.train.x, splits.train.y
    assert x.shape == (8000, 32) and x.dtype == torch.float32
    assert set(y["class"].unique().tolist()) == set(range(64))
    instance = p.instance(1)
    for i in range(3):
        assert y[f"r{i}"].std().item() == pytest.approx(1.0, rel=0.15)
        clean = torch.from_numpy(instance.regress(x.double().numpy())[:, i])
        # the target is the input's function up to noise 0.01 (the input noise is part of x)
        assert (y[f"r{i}"].double() - clean).std().item() == pytest.approx(0.01, rel=0.1)


@pytest.mark.parametrize(
    ("name", "better"),
    [("offset-scale", ("heavy", "class")), ("manyclass-fast", ("class", "r0", "r1", "r2"))],
)
def test_equal_weighting_trains_the_new_problems(name: str, better: tuple[str, ...]) -> None:
    """A short EW run (4 epochs of batches of 32 on 3,000 samples) beats the untrained model on
    these tasks (not on offset-scale's tiny task: EW starves it, the point of the problem)."""
    from lossrag.bench.fit import fit

    budget = {"epochs": 4, "batch_size": 32}
    p = get_problem(name, n_train=3000, n_val=256, n_test=1000, budget=budget)
    before = p.evaluate(p.build_model(0), p.load(0).test)
    after = fit(p, "ew", 0).metrics
    hib = p.higher_is_better
    for task in better:
        gain = after[task] - before[task]
        assert (gain > 0) if hib[task] else (gain < 0), (task, before[task], after[task])
    if name == "offset-scale":
        assert after["heavy"] < 0.2 * before["heavy"]  # it found the offset of 1000
