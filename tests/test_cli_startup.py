"""Fast start: what ``import lossrag``, ``wrap(..., policy="ew")`` and ``lossrag --help`` import,
and the lazy method registry that makes it so (each check in a fresh interpreter)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from types import ModuleType

import pytest

import lossrag.policy
import lossrag.weighting
from lossrag.weighting import base

SOLVERS = ("faiss", "torchjd", "cvxpy")


def _imported_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the top-level modules among :data:`SOLVERS` and torch
    that it left imported."""
    report = (
        "\nimport json, sys\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules}"
        f" & {{*{SOLVERS!r}, 'torch'}})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code + report], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_listing_methods_and_wrap_ew_import_no_solver():
    code = """
import torch
import lossrag
import lossrag.weighting
assert {"ew", "mgda", "nashmtl", "lossrag"} <= set(lossrag.weighting.available())
from lossrag.models import MultiTaskMLP
tasks = [lossrag.Task("a", kind="regression"), lossrag.Task("b", kind="classification",
         num_classes=3)]
model = MultiTaskMLP(4, [8], tasks)
composer = lossrag.wrap(model, tasks, policy="ew")
record = composer.backward(model(torch.randn(5, 4)),
                           {"a": torch.randn(5), "b": torch.randint(0, 3, (5,))})
assert record.task_weights() == {"a": 1.0, "b": 1.0}, record.task_weights()
"""
    assert _imported_after(code) == ["torch"]


@pytest.mark.parametrize("args", [["--help"], ["bench", "--help"], ["bench", "run", "--help"]])
def test_help_imports_no_torch(args):
    code = f"""
import sys
from lossrag.cli import main
sys.argv = ["lossrag", *{args!r}]
try:
    main()
except SystemExit as done:
    assert done.code == 0, done.code
"""
    assert _imported_after(code) == []


def _every_module(package: ModuleType) -> None:
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        importlib.import_module(info.name)


def test_builtin_table_names_every_registered_method():
    """A built-in that is registered but missing from the table would be invisible to
    ``available()`` until its module happens to be imported."""
    _every_module(lossrag.weighting)
    _every_module(lossrag.policy)
    ours = {
        name: f"{cls.__module__}:{cls.__qualname__}"
        for name, cls in base._REGISTRY.items()
        if cls.__module__.startswith("lossrag.") or cls.__module__ == "abc"
    }
    assert set(ours) <= set(base._BUILTIN), sorted(set(ours) - set(base._BUILTIN))
    for name, target in base._BUILTIN.items():
        module, _, qualname = target.partition(":")
        cls = base.method_class(name)
        assert (cls.name, cls.__qualname__) == (name, qualname)
        assert getattr(importlib.import_module(module), qualname) is cls


def test_user_methods_register_and_builtin_names_are_reserved(monkeypatch):
    # as if UW's module had not been imported yet
    monkeypatch.setattr(base, "_REGISTRY", {k: v for k, v in base._REGISTRY.items() if k != "uw"})

    class Mine(base.LossMethod):
        name = "mine-for-the-test"

        def weigh(self, losses):
            return losses.detach() * 0 + 2

    assert base.register_method(Mine) is Mine
    assert "mine-for-the-test" in base.available()
    assert isinstance(base.make_method("mine-for-the-test"), Mine)
    with pytest.raises(ValueError, match="already registered"):
        base.register_method(Mine)

    class Impostor(Mine):
        name = "uw"

    with pytest.raises(ValueError, match=r"'uw' is taken by the built-in .*scalarizers:UW"):
        base.register_method(Impostor)
    with pytest.raises(ValueError, match="Did you mean 'famo'"):
        base.method_class("famoo")


def test_subpackages_are_attributes_after_a_plain_import():
    """``lossrag.weighting.UW(...)`` and ``lossrag.policy.LossRAG(...)``, as the README writes
    them, work after ``import lossrag`` alone (an AttributeError before, found by a user
    trial); the asserts run in a fresh interpreter."""
    code = """
import lossrag
assert lossrag.weighting.UW(lr=1e-2).lr == 1e-2
assert lossrag.policy.LossRAG(refresh_every=20).refresh_every == 20
assert lossrag.models.MultiTaskMLP and lossrag.index.LossIndex and lossrag.meta.objectives
assert {"weighting", "policy", "train"} <= set(dir(lossrag))
"""
    assert "torch" in _imported_after(code)  # the interpreter's asserts passed


def test_public_names_resolve_lazily():
    from lossrag.weighting import EW, UW, gradnorm_weight_grad

    assert UW is base.method_class("uw") and EW is base.method_class("ew")
    assert callable(gradnorm_weight_grad)
    assert set(lossrag.weighting.__all__) <= set(dir(lossrag.weighting))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = lossrag.weighting.Nope
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = lossrag.Nope
    assert lossrag.wrap is importlib.import_module("lossrag.compose").wrap
