"""The registry, the cards and hyper-parameter validation."""

from __future__ import annotations

import copy
import math
import pickle
import re
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor

from lossrag._util import data_dir
from lossrag.losses import FAMILIES, HyperParam, Loss, LossFn, LossRegistry, LossSpec, registry
from lossrag.losses.regression import huber
from lossrag.tasks import KINDS, NATURAL_LOSS, Task

NAMES = registry.list()


# ---------------------------------------------------------------- names, kinds, lookup


def test_library_size_and_coverage() -> None:
    assert len(NAMES) >= 28 and len(registry) == len(NAMES)
    for kind in KINDS:
        assert len(registry.list(kind=kind)) >= 4, kind
        natural = registry.spec(NATURAL_LOSS[kind])
        assert natural.kinds == [kind]


def test_list_pattern_and_kind() -> None:
    assert sorted(NAMES) == NAMES
    assert registry.list("*l1*") == ["l1", "smooth_l1"]
    assert registry.list("focal*") == ["focal", "focal_bce"]
    assert registry.list(kind="multilabel") == ["asymmetric", "bce", "focal_bce", "soft_f1"]
    assert registry.list("t*", kind="representation") == ["triplet", "triplet_all"]
    assert registry.list("no_such_*") == []
    by_kind = [n for kind in KINDS for n in registry.list(kind=kind)]
    assert sorted(by_kind) == NAMES  # every loss has exactly one kind today


def test_unknown_kind_suggests() -> None:
    with pytest.raises(ValueError, match="Did you mean 'regression'"):
        registry.list(kind="regresion")


@pytest.mark.parametrize(
    ("typo", "meant"), [("hubr", "huber"), ("focall", "focal"), ("supcn", "supcon")]
)
def test_unknown_loss_suggests(typo: str, meant: str) -> None:
    for call in (registry.spec, registry.function, registry.create):
        with pytest.raises(ValueError, match=rf"Unknown loss '{typo}'\. Did you mean '{meant}'"):
            call(typo)
    assert typo not in registry and meant in registry


def test_function_is_the_registered_callable() -> None:
    assert registry.function("huber") is huber


# ---------------------------------------------------------------- create and the Loss module


def test_create_gives_a_configured_module() -> None:
    loss = registry.create("huber", delta=0.5)
    assert isinstance(loss, Loss) and isinstance(loss, torch.nn.Module)
    assert loss.name == "huber" and loss.spec is registry.spec("huber")
    assert loss.params == {"delta": 0.5}
    assert registry.create("huber").params == {"delta": 1.0}
    x, y = torch.randn(5, 2), torch.randn(5, 2)
    assert torch.equal(loss(x, y), huber(x, y, delta=0.5))
    assert "huber, delta=0.5" in repr(loss)
    assert list(loss.parameters()) == []


def test_loss_module_pickles_and_copies() -> None:
    loss = registry.create("focal", gamma=3.0)
    logits, target = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    for clone in (pickle.loads(pickle.dumps(loss)), copy.deepcopy(loss)):
        assert clone.params == loss.params
        assert torch.equal(clone(logits, target), loss(logits, target))


def test_create_validates_hyper_parameters() -> None:
    message = "Loss 'huber': hyper-parameter 'delta' must lie in (0, inf), got -1"
    with pytest.raises(ValueError, match=re.escape(message)):
        registry.create("huber", delta=-1.0)
    with pytest.raises(ValueError, match=re.escape("must lie in (0, inf), got 0")):
        registry.create("huber", delta=0)
    with pytest.raises(ValueError, match=r"has no hyper-parameter 'delt'\. Did you mean 'delta'"):
        registry.create("huber", delt=1.0)
    with pytest.raises(ValueError, match="'l2' takes no hyper-parameters"):
        registry.create("l2", delta=1.0)
    with pytest.raises(ValueError, match=re.escape("'tau' must lie in (0, 1), got 1")):
        registry.create("pinball", tau=1)
    with pytest.raises(ValueError, match=re.escape("'epsilon' must lie in [-1, 100]")):
        registry.create("poly1", epsilon=-1.5)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="'gamma' must lie in"):
            registry.create("focal", gamma=bad)
    for wrong_type in ("1.0", True, None, torch.tensor(1.0)):
        with pytest.raises(TypeError, match="'delta' must be a real number"):
            registry.create("huber", delta=wrong_type)  # type: ignore[arg-type]
    assert registry.create("poly1", epsilon=-1).params == {"epsilon": -1.0}


def test_check_params_fills_defaults_and_accepts_numpy() -> None:
    import numpy as np

    spec = registry.spec("asymmetric")
    assert spec.check_params({}) == spec.defaults
    checked = spec.check_params({"clip": np.float64(0.1)})
    assert checked == {**spec.defaults, "clip": 0.1} and type(checked["clip"]) is float
    with pytest.raises(TypeError, match="must be a mapping"):
        spec.check_params([("clip", 0.1)])  # type: ignore[arg-type]


def test_integer_hyper_parameters() -> None:
    hp = HyperParam(default=3, low=1, high=10, grid=(1, 3, 5), integer=True, doc="steps")
    assert hp.check("x", "k", 4.0) == 4 and type(hp.check("x", "k", 4.0)) is int
    with pytest.raises(ValueError, match=re.escape("'k' must be an integer in [1, 10], got 2.5")):
        hp.check("x", "k", 2.5)
    with pytest.raises(ValidationError, match="integral"):
        HyperParam(default=3, low=1, high=10, grid=(1.5, 3), integer=True, doc="steps")


def test_task_uses_the_cards() -> None:
    task = Task("y", kind="regression", loss="huber", loss_params={"delta": 0.5})
    assert task.loss_params == {"delta": 0.5}
    with pytest.raises(ValueError, match="does not apply to regression"):
        Task("y", kind="regression", loss="ce")
    with pytest.raises(ValueError, match="'delta' must lie in"):
        Task("y", kind="regression", loss="huber", loss_params={"delta": -2.0})


# ---------------------------------------------------------------- variants


def test_variants() -> None:
    variants = registry.variants()
    assert 500 <= len(variants) <= 5000
    assert len({(n, tuple(sorted(p.items()))) for n, p in variants}) == len(variants)
    assert sum(len(registry.variants(kind)) for kind in KINDS) == len(variants)
    for name in NAMES:
        spec = registry.spec(name)
        mine = [p for n, p in variants if n == name]
        assert len(mine) == math.prod(len(hp.grid) for hp in spec.params.values())
        assert spec.defaults in mine
        assert all(spec.check_params(p) == p for p in mine)
    names = {n for n, _ in registry.variants("classification")}
    assert names == set(registry.list(kind="classification"))


# ---------------------------------------------------------------- cards


def test_cards_and_functions_match() -> None:
    assert registry.folder == data_dir("library")
    assert sorted(p.stem for p in registry.folder.glob("*.toml")) == NAMES
    assert (registry.folder / "README.md").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_card_content(name: str) -> None:
    spec = registry.spec(name)
    assert spec.family in FAMILIES
    assert re.search(r"\((19|20)\d\d\)|torch\.nn\.", spec.reference), "cite a paper (year) or doc"
    assert spec.per_batch == (name in ("infonce", "varcov"))
    assert spec == LossSpec.from_toml(registry.folder / f"{name}.toml")


def _card(name: str, **override: object) -> str:
    fields: dict[str, object] = {
        "name": name,
        "family": "squared",
        "kinds": ["regression"],
        "target": "float",
        "description": "A test loss.",
        "formula": "r**2",
        "reference": "Nobody (2024).",
        "non_negative": True,
        "smooth": True,
        **override,
    }
    lines = []
    for key, value in fields.items():
        text = str(value).lower() if isinstance(value, bool) else repr(value).replace("'", '"')
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def _sq(output: Tensor, target: Tensor) -> Tensor:
    return (output - target).square()


def _scaled(output: Tensor, target: Tensor, *, k: float = 2.0) -> Tensor:
    return k * (output - target).square()


SCALED_PARAM = '\n[params.k]\ndefault = 2.0\nlow = 0.0\nhigh = 10.0\ngrid = [1.0, 2.0]\ndoc = "k"\n'


def _registry(tmp_path: Path, cards: dict[str, str], functions: dict[str, LossFn]) -> LossRegistry:
    for stem, text in cards.items():
        (tmp_path / f"{stem}.toml").write_text(text)
    reg = LossRegistry(tmp_path)
    for name, fn in functions.items():
        reg.register(name)(fn)
    return reg


def test_private_registry_works(tmp_path: Path) -> None:
    reg = _registry(
        tmp_path,
        {"sq": _card("sq"), "scaled": _card("scaled") + SCALED_PARAM},
        {"sq": _sq, "scaled": _scaled},
    )
    assert reg.list() == ["scaled", "sq"]
    assert reg.variants() == [("scaled", {"k": 1.0}), ("scaled", {"k": 2.0}), ("sq", {})]
    assert float(reg.create("scaled", k=3.0)(torch.ones(1), torch.zeros(1))) == 3.0


@pytest.mark.parametrize(
    ("cards", "functions", "message"),
    [
        (
            {"sq": _card("sq"), "other": _card("other")},
            {"sq": _sq},
            r"other\.toml has no registered function",
        ),
        ({}, {"sq": _sq}, r"sq have no card .*sq\.toml"),
        ({"sq": "name = [unclosed"}, {"sq": _sq}, r"Invalid loss card .*sq\.toml"),
        ({"sq": _card("sq", colour="red")}, {"sq": _sq}, r"Invalid loss card .*sq\.toml.*colour"),
        ({"sq": _card("sq", target="index")}, {"sq": _sq}, r"sq\.toml.*does not fit kinds"),
        ({"sq": _card("sq", family="magic")}, {"sq": _sq}, r"sq\.toml.*family"),
        ({"sq": _card("sqq")}, {"sq": _sq}, r"sq\.toml names the loss 'sqq'"),
        ({"sq": _card("sq") + SCALED_PARAM}, {"sq": _sq}, r"sq\.toml does not match .*keyword"),
        (
            {"scaled": _card("scaled") + SCALED_PARAM.replace("default = 2.0", "default = 1.0")},
            {"scaled": _scaled},
            r"scaled\.toml does not match .*defaults",
        ),
        (
            {"sq": _card("sq") + SCALED_PARAM.replace("grid = [1.0, 2.0]", "grid = [2.0, 1.0]")},
            {"sq": _sq},
            r"sq\.toml.*strictly increasing",
        ),
        (
            {"sq": _card("sq") + SCALED_PARAM.replace("grid = [1.0, 2.0]", "grid = [1.0]")},
            {"sq": _sq},
            r"sq\.toml.*must contain the default",
        ),
        (
            {"sq": _card("sq") + SCALED_PARAM.replace("default = 2.0", "default = 20.0")},
            {"sq": _sq},
            r"sq\.toml.*outside \[0, 10\]",
        ),
    ],
)
def test_inconsistent_library_is_an_error_naming_the_file(
    tmp_path: Path, cards: dict[str, str], functions: dict[str, LossFn], message: str
) -> None:
    reg = _registry(tmp_path, cards, functions)
    with pytest.raises(ValueError, match="(?s)" + message):
        reg.list()


def test_registering_twice_is_an_error(tmp_path: Path) -> None:
    reg = _registry(tmp_path, {"sq": _card("sq")}, {"sq": _sq})
    with pytest.raises(ValueError, match="'sq' is registered twice"):
        reg.register("sq")(_sq)


def test_registering_later_rechecks_the_cards(tmp_path: Path) -> None:
    reg = _registry(tmp_path, {"sq": _card("sq")}, {"sq": _sq})
    assert reg.list() == ["sq"]
    reg.register("scaled")(_scaled)
    with pytest.raises(ValueError, match="scaled have no card"):
        reg.list()
    (tmp_path / "scaled.toml").write_text(_card("scaled") + SCALED_PARAM)
    assert reg.list() == ["scaled", "sq"]
