"""The policy and the meta-learning machinery import no baseline: what they share with the
baselines (the ``Method`` base and registry, the min-norm solver) lives outside the baseline
modules of ``lossrag.weighting``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lossrag
from lossrag.weighting import base

_ROOT = Path(lossrag.__file__).parent
#: What may be imported from ``lossrag.weighting``: its infrastructure, not a baseline.
_ALLOWED = {"base", *base.__all__}


def _baselines(path: Path) -> list[str]:
    """The imports of ``path`` that reach a baseline module of ``lossrag.weighting`` (a name
    imported from the package itself other than its infrastructure loads one)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
            if node.module == "lossrag.weighting":
                modules = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for module in modules:
            package, _, rest = module.partition("lossrag.weighting.")
            if not package and rest and rest.split(".")[0] not in _ALLOWED:
                found.append(module)
    return found


@pytest.mark.parametrize(
    "path",
    sorted([*(_ROOT / "policy").glob("*.py"), *(_ROOT / "meta").glob("*.py")]),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_policy_and_meta_import_no_baseline(path):
    assert _baselines(path) == []


def test_the_scan_sees_a_baseline_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from lossrag.weighting.metaweighting import common_direction\n"
        "from lossrag.weighting import FAMO, Method\n"
        "from lossrag.weighting.base import register_method\n"
        "import lossrag.weighting.scalarizers\n"
    )
    assert _baselines(probe) == [
        "lossrag.weighting.metaweighting",
        "lossrag.weighting.FAMO",
        "lossrag.weighting.scalarizers",
    ]
