"""An experiment on issue 13's starving case, not a shipped setting: the shipped policy with each
classification task's loss scale in units of its chance-level loss ``log C`` instead of its first
loss (which is about ``log C``), so that a 10-class task's loss is no longer divided by 3.3 times
what a binary task's is (the mechanism ``lossrag inspect --plot`` shows on
``benchmarks/starving_mlp.py``'s problem: the binary task's multiplier grows to several times the
10-class task's). Regression terms keep their first loss as unit. The division comes after the
policy's ``max_ratio`` bound, so it also moves a class task's cap (×2.3 for 10 classes, ÷1.44
for 2), and it applies to every classification term, a switched-on robust loss's too.

It patches ``LossRAG.coefficients`` in this process, then runs ``starving_mlp.py`` (5 seeds) and
``variants.py`` on the eight suite problems the one-commit run has finished (3 seeds; the
patched runs kept in ``benchmarks/variants/chance-units-<hash of the patch>/``)::

    python benchmarks/chance_units.py > benchmarks/chance_units.txt
"""

from __future__ import annotations

import hashlib
import inspect
import math
import runpy
import sys
from pathlib import Path

from torch import Tensor

import lossrag.policy.lossrag as policy_module
from lossrag.keys import TermKey
from lossrag.policy import weights as weighing

HERE = Path(__file__).parent
PROBLEMS = (
    "gradnorm-synth-t2,digits-mtl,mnist1d-mtl,mnist1d-noisy,gradnorm-synth-t10,qm9,qm9-raw,"
    "multifashion"
)


def coefficients(self: policy_module.LossRAG, like: Tensor, terms: list[TermKey]) -> Tensor:
    """``LossRAG.coefficients`` with a classification term's scale divided by ``log C``."""
    naturals = [TermKey(task, loss) for task, loss in self.natural.items()]
    scales = self.tracker.scales(terms, among=naturals)
    for i, key in enumerate(terms):
        task = self.tasks[key.task]
        if task.kind == "classification" and task.num_classes:
            scales[i] /= math.log(task.num_classes)
    values = weighing.coefficients(self.weights, terms, scales, len(self.tasks))
    self.multipliers = dict(zip(terms, values, strict=True))
    return like.new_tensor(values)


def main() -> None:
    policy_module.LossRAG.coefficients = coefficients  # type: ignore[method-assign]
    print("# starving_mlp.py --seeds 5 --methods default,ew,famo (default: chance units)")
    sys.argv = ["starving_mlp.py", "--seeds", "5", "--methods", "default,ew,famo"]
    runpy.run_path(str(HERE / "starving_mlp.py"), run_name="__main__")
    print("\n# variants.py on the eight finished suite problems (default: chance units)")
    variants = runpy.run_path(str(HERE / "variants.py"))
    patch = hashlib.sha256(inspect.getsource(coefficients).encode()).hexdigest()[:8]
    variants["main"].__globals__["OWN"] = HERE / "variants" / f"chance-units-{patch}"
    sys.argv = ["variants.py", "lossrag-default", "{}", "--label", "default, chance units"]
    sys.argv += ["--problems", PROBLEMS, "--seeds", "3"]
    variants["main"]()


if __name__ == "__main__":
    main()
