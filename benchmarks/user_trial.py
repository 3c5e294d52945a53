"""A new user's trial (issue 12): a small CNN on scikit-learn's digits, four tasks, Adam.

Tasks, from the 8×8 images of ``sklearn.datasets.load_digits``:

- ``digit``: the 10-class label (cross-entropy, test accuracy);
- ``parity``: even or odd (binary cross-entropy, test accuracy);
- ``ink``: mean pixel intensity, standardised on the training split (MAE);
- ``row``: vertical centre of mass of the ink, standardised on the training split (MAE).

Every method trains the same CNN (two 3×3 convolutions, max-pool, a 64-wide linear layer as the
shared trunk, one linear head per task) with Adam (lr 1e-3, batch 64) for ``--epochs`` epochs on
1,297 training images and is tested on the other 500, over ``--seeds`` seeds. ``default`` is the
shipped policy, trained exactly as a user would: ``lossrag.wrap(model, tasks, policy="default",
shared=model.trunk)`` then ``composer.backward(model(x), y)`` and ``opt.step()``.

Printed: every task's test metric per method (mean ± std over seeds), Δm against single-task
learning (``stl``: one network per task, same recipe), and a ``starved`` flag on a task more than
3 % worse (relative) than the better of EW and FAMO. For LossRAG policies, the largest ratio
between the tasks' effective multipliers ``w_i / scale_i`` (summed over a task's terms) over the
run is printed too.

``--popart`` runs the target-normalisation measurement instead (:func:`popart`).

Run single-process (``torch.set_num_threads(1)``)::

    python benchmarks/user_trial.py                      # ew famo default geometricmean stl
    python benchmarks/user_trial.py --methods default --seeds 0 1 2 --epochs 40
    python benchmarks/user_trial.py --methods stl ew famo default@max_ratio=3,scale_floor=0.1

(``default@KEY=JSON,...``: the shipped policy with settings overridden, for measurements.)

Measured (10 seeds, 40 epochs; Δm % against STL, lower is better; issue 12):

============================  =====  ======  =====  =====  =====  =======
method                        digit  parity  ink    row    Δm     starved
============================  =====  ======  =====  =====  =====  =======
ew                            0.963  0.975   0.091  0.082  +29.8  -
famo                          0.965  0.970   0.384  0.091  +158   ink, row
default, 1/EMA L (before)     0.818  0.914   0.065  0.040  +3.2   digit, parity
default, max_ratio=3 (now)    0.961  0.985   0.067  0.061  +9.2   -
default, max_ratio=2          0.963  0.984   0.093  0.065  +21.8  -
default, scale_floor=0.3      0.963  0.983   0.074  0.074  +18.5  -
geometricmean                 0.732  0.887   0.072  0.043  +10.7  digit, parity
============================  =====  ======  =====  =====  =====  =======

Raw targets (``--targets raw``: ``ink = 1e3 + 1e2·z``, ``row = 1e-3·z``; MAE in units of
``z``), 3 seeds, 40 epochs, code ``373cb51``; the default normalises both targets itself
(``normalize_targets="auto"``), ``ew+popart`` is EW with ``normalize_targets=True``:

============================  =====  ======  =====  =====  =======  =================
method                        digit  parity  ink    row    Δm       starved
============================  =====  ======  =====  =====  =======  =================
stl (EW per task, raw)        0.970  0.991   0.255  0.994  0
ew                            0.153  0.481   0.260  151.5  +3822    parity, row
famo                          0.094  0.567   9.872  0.917  +973     digit, ink
geometricmean                 0.149  0.637   9.861  1.383  +980     ink, row
default                       0.963  0.980   0.058  0.063  −42.3    -
ew+popart                     0.963  0.977   0.092  0.084  −38.3    -
============================  =====  ======  =====  =====  =======  =================

Gross errors (``--targets outliers``: 15 % of the training ``ink`` targets get ``+10·|z|``
standard deviations; test clean), 3 seeds, 40 epochs, code ``2226b64``; ``default@max_terms=1``
is the shipped policy kept on its natural losses (no switching):

============================  =====  ======  =====  =====  =======  =================
method                        digit  parity  ink    row    Δm       starved
============================  =====  ======  =====  =====  =======  =================
stl (EW per task)             0.970  0.991   1.475  0.045  0        ink
ew                            0.947  0.957   1.432  0.159  +63.6    ink, row
famo                          0.964  0.980   1.230  0.068  +8.7     -
geometricmean                 0.883  0.966   1.215  0.065  +9.3     digit
default (switches ink)        0.967  0.988   0.128  0.087  +0.3     row
default@max_terms=1           0.965  0.987   1.479  0.071  +14.2    ink, row
============================  =====  ======  =====  =====  =======  =================

Switching to a robust loss cuts ink's clean-test MAE by 10× (and is the only row that learns
ink), but row loses 28 % against FAMO: the same trade as the class task of
``mnist1d-outliers`` (issue 13, open).
At code ``c82b949`` (3 seeds; the loss-scale bound keeps a task whose natural loss is switched
off, and a loss is switched on only with corruption evidence) the default gives 0.966 / 0.987 /
0.108 / 0.068, Δm −10.2 (same STL), and no task starved (row level with FAMO's 0.068): ink
switches to ``tukey(c=0.5)`` and ``welsch(scale=0.2)`` with L2 off in every seed.

Flipped labels (``--targets flipped``: 40 % of the training ``digit`` labels replaced by a
uniformly drawn class; ``parity`` keeps the true labels; test clean), 3 seeds, 40 epochs; the
default rows from code ``c82b949``, the others from ``7628c7a`` (they do not depend on the policy);
``default@max_terms=1`` is the shipped policy kept on its natural losses:

============================  =====  ======  =====  =====  =======  =================
method                        digit  parity  ink    row    Δm       starved
============================  =====  ======  =====  =====  =======  =================
stl (EW per task)             0.932  0.991   0.051  0.045  0        -
ew                            0.954  0.982   0.109  0.089  +51.8    ink, row
famo                          0.917  0.957   0.060  0.057  +11.7    digit
geometricmean                 0.575  0.888   0.058  0.041  +13.2    digit, parity
default                       0.938  0.985   0.067  0.066  +19.0    ink (11 %), row (17 %)
default@max_terms=1           0.927  0.985   0.062  0.063  +15.6    ink (4 %), row (12 %)
============================  =====  ======  =====  =====  =======  =================

The default switches ``digit`` to robust losses in every seed (``mae_prob`` beside cross-entropy
in seed 0; ``mae_prob`` and ``gce(q=0.7)`` with cross-entropy off in seeds 1 and 2), at the
second or third retrieval (step 401–601 of 800). ``digit`` gains (0.938 ± 0.002 against 0.927 ±
0.013), the regressions lose (ink 0.067 against 0.062, row 0.066 against 0.063): Δm +19.0
against +15.6 without switching, the trade ``mnist1d-outliers`` shows for its class task. At
``017e2f8`` (a cleaner gradient alone could still switch a loss: ``parity`` to label smoothing in
one seed) Δm was +21.4; before it, the regressions' multipliers jumped from 4-5 to 30-76 once the
digit task's cross-entropy went off (the loss-scale bound lost its slowest task; +23.9).
Trained from the start with one loss (``Task("digit", loss=...)``, 3 seeds, code ``7628c7a``),
EW reaches 0.963 with ``sce``, 0.951 with ``gce``, 0.954 with CE and 0.701 with ``mae_prob``; so
the loss the evidence points to first (the one the flipped labels mislead least, MAE on
probabilities) is not the best one here.

Online meta-adaptation (``--holdout 200``: every method trains on 1,097 images; the other 200,
as corrupted as the training ones, are the query set of ``default+query``), 3 seeds, 40 epochs,
code ``66d2320``::

    M="stl ew default default+query"
    python benchmarks/user_trial.py --targets outliers --holdout 200 --methods $M
    python benchmarks/user_trial.py --targets flipped --holdout 200 --methods $M

==========================  =====  ======  =====  =====  =====
targets, method             digit  parity  ink    row    Δm
==========================  =====  ======  =====  =====  =====
outliers: stl               0.969  0.992   1.129  0.044  0
outliers: ew                0.939  0.947   1.210  0.128  +50.7
outliers: default           0.965  0.983   0.148  0.073  −5.2
outliers: default+query     0.965  0.984   0.154  0.073  −4.9
flipped: stl                0.917  0.992   0.072  0.044  0
flipped: ew                 0.945  0.976   0.117  0.079  +34.8
flipped: default            0.910  0.987   0.071  0.089  +24.9
flipped: default+query      0.909  0.986   0.067  0.074  +15.1
==========================  =====  ======  =====  =====  =====

With a query stream the switches are those of zero-shot (ink to ``tukey(c=0.5)`` and
``welsch(scale=0.2)`` in every seed; digit to ``ce`` + ``mae_prob`` in seeds 1 and 2); before
commit ``08bddb4`` a query stream kept every task on its natural loss. On the smaller training
set the flipped digit task is 3.7 % below EW's accuracy (0.910 against 0.945; 1.7 % on 1,297
images, above); the default gives it the lowest mean weight of the four tasks (0.90) and
divides its cross-entropy, which the flipped labels keep large, by its running level, where EW
takes it raw. Why the gap widens with less data was not measured further.

Junk tasks (``--targets junk``: ``shuffled``, the digit labels of other images, and ``noise``,
N(0, 1) per image, trained and never scored), 3 seeds, 40 epochs; the default is the retrained
policy of commit ``a1d10a3`` (the other rows do not depend on it):

============================  =====  ======  =====  =====  =======  =================
method                        digit  parity  ink    row    Δm       starved
============================  =====  ======  =====  =====  =======  =================
stl                           0.970  0.991   0.051  0.045  0        -
ew                            0.970  0.975   0.112  0.148  +86.5    row
famo                          0.913  0.941   0.183  0.057  +73.5    digit, parity, ink
geometricmean                 0.739  0.893   0.104  0.049  +36.2    digit, parity
default                       0.968  0.984   0.082  0.076  +32.6    row (33 %)
============================  =====  ======  =====  =====  =======  =================

The default's mean weights: digit 0.99, parity 1.08, ink 1.10, row 1.07, shuffled 0.88, noise
0.87: both junk tasks below every scored task in every seed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn

import lossrag
from lossrag import Task
from lossrag.keys import TermKey

TASKS = [
    Task("digit", kind="classification", num_classes=10, metric="accuracy"),
    Task("parity", kind="classification", num_classes=2, metric="accuracy"),
    Task("ink", kind="regression", metric="mae"),
    Task("row", kind="regression", metric="mae"),
]
HIGHER_IS_BETTER = {"accuracy": True, "mae": False}
#: ``--targets junk``: two tasks trained but never scored, whose targets carry no signal.
JUNK = [
    Task("shuffled", kind="classification", num_classes=10),  # digit labels of other images
    Task("noise", kind="regression"),  # N(0, 1) per image
]
#: Per method, each seed's mean weight per task over the run (LossRAG policies).
WEIGHTS: dict[str, list[dict[str, float]]] = {}
#: Per method, each seed's switched tasks and their active losses at the end (LossRAG policies).
SWITCHED: dict[str, list[dict[str, list[str]]]] = {}
N_TRAIN = 1297
#: ``--targets raw``: ``(offset, scale)`` of each regression target (a large offset, a tiny scale).
UNITS: dict[str, tuple[float, float]] = {}
_RAW_UNITS = {"ink": (1e3, 1e2), "row": (0.0, 1e-3)}
BATCH = 64
#: ``--holdout``: the training images held out as the validation (query) set, with their targets
#: as corrupted as the training ones; ``None`` without one.
VAL: tuple[Tensor, dict[str, Tensor]] | None = None


class SmallCNN(nn.Module):
    """Two 3×3 convolutions and a max-pool, a 64-wide linear layer (``trunk``), linear heads."""

    def __init__(self, tasks: Sequence[Task]) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
        )
        self.heads = nn.ModuleDict({t.name: nn.Linear(64, t.num_classes or 1) for t in tasks})
        self.kinds = {t.name: t.kind for t in tasks}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``{task: output}``; regression outputs squeezed to ``(B,)``."""
        z = self.trunk(x)
        out = {n: h(z) for n, h in self.heads.items()}
        return {n: o.squeeze(-1) if self.kinds[n] == "regression" else o for n, o in out.items()}


def data(
    units: bool = False, outliers: float = 0.0, junk: bool = False, flipped: float = 0.0
) -> tuple[Tensor, dict[str, Tensor], Tensor, dict[str, Tensor]]:
    """Train and test inputs ``(N, 64)`` in [0, 1] and their targets (fixed split); with
    ``units``, the standardised regressions ``z`` become ``offset + scale·z`` (:data:`UNITS`);
    with ``outliers``, that share of the *training* ``ink`` targets gets a one-sided gross error
    of ``10·|N(0, 1)|`` standard deviations (the test split stays clean); with ``flipped``, that
    share of the training ``digit`` labels is replaced by a uniformly drawn class (``parity``
    keeps the true labels); with ``junk``, the training targets of :data:`JUNK` are added."""
    raw = load_digits()
    x = torch.tensor(raw.data, dtype=torch.float32) / 16.0
    label = torch.tensor(raw.target, dtype=torch.long)
    img = x.view(-1, 8, 8)
    ink = img.mean(dim=(1, 2))
    rows = torch.arange(8, dtype=torch.float32).view(1, 8, 1)
    row = (img * rows).sum(dim=(1, 2)) / img.sum(dim=(1, 2)).clamp_min(1e-6)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    tr, te = order[:N_TRAIN], order[N_TRAIN:]
    y: dict[str, Tensor] = {"digit": label, "parity": label % 2}
    for name, v in (("ink", ink), ("row", row)):
        y[name] = (v - v[tr].mean()) / v[tr].std()
        if units:
            offset, scale = UNITS[name]
            y[name] = offset + scale * y[name]
    train = {k: v[tr] for k, v in y.items()}
    if outliers:
        g = torch.Generator().manual_seed(4321)
        hit = torch.rand(len(tr), generator=g) < outliers
        train["ink"] = train["ink"] + hit * 10 * torch.randn(len(tr), generator=g).abs()
    if flipped:
        g = torch.Generator().manual_seed(1357)
        hit = torch.rand(len(tr), generator=g) < flipped
        drawn = torch.randint(0, 10, (len(tr),), generator=g)
        train["digit"] = torch.where(hit, drawn, train["digit"])
    if junk:
        g = torch.Generator().manual_seed(2468)
        train["shuffled"] = train["digit"][torch.randperm(len(tr), generator=g)]
        train["noise"] = torch.randn(len(tr), generator=g)
    return x[tr], train, x[te], {k: v[te] for k, v in y.items()}


def metric(task: Task, out: Tensor, target: Tensor) -> float:
    """Test accuracy (class tasks) or MAE (regressions)."""
    if task.kind == "classification":
        return float((out.argmax(1) == target).float().mean())
    return float((out - target).abs().mean())


def _multipliers(policy: Any) -> dict[TermKey, float] | None:
    """A LossRAG policy's effective multipliers ``w_i / scale_i`` (``None`` for other methods)."""
    if not hasattr(policy, "tracker") or not policy.weights:
        return None
    if isinstance(getattr(policy, "multipliers", None), dict) and policy.multipliers:
        return dict(policy.multipliers)
    return {k: w / policy.tracker.scale(k) for k, w in policy.weights.items()}


def run(
    method: str,
    seed: int,
    epochs: int,
    tasks: Sequence[Task] = TASKS,
    overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, float], float]:
    """Train one method from one seed; ``(test metric per task, largest multiplier ratio)``.

    ``METHOD+popart`` trains with ``normalize_targets=True`` (PopArt on every regression task);
    ``default`` chooses ``"auto"`` itself. ``METHOD+query`` passes the ``--holdout`` images as
    ``query=`` (online meta-adaptation, the scored tasks as query tasks, ``meta_every=5``).
    With ``--targets raw`` the regressions are in odd units (``UNITS``): their MAE is reported
    divided by the unit, comparable to ``standard``."""
    xtr, ytr, xte, yte = DATA
    label = method
    torch.manual_seed(seed)
    model = SmallCNN(tasks)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    method, plus, _ = method.partition("+popart")
    method, query, _ = method.partition("+query")
    policy: Any = method
    if method.startswith("default@"):  # a variant of the shipped policy: default@key=json,...
        pairs = (kv.split("=", 1) for kv in method.split("@", 1)[1].split(","))
        overrides = {**(overrides or {}), **{k: json.loads(v) for k, v in pairs}}
        policy = "default"
    if policy == "default" and overrides:
        from lossrag.policy import load_policy

        policy = load_policy("default", **overrides)
    options: dict[str, Any] = {"normalize_targets": True} if plus else {}
    if query:
        if VAL is None:
            raise SystemExit(f"{label}: +query needs --holdout N (the images held out as query)")
        xv, yv = VAL
        batches = [
            (xv[i : i + BATCH], {t.name: yv[t.name][i : i + BATCH] for t in tasks})
            for i in range(0, len(xv), BATCH)
        ]
        scored = [t.name for t in tasks if t.name in DATA[3]]
        options.update(query=batches, optimizer=opt, query_tasks=scored)
    composer = lossrag.wrap(model, tasks, policy, shared=model.trunk, seed=seed, **options)
    gen = torch.Generator().manual_seed(seed)
    worst = 1.0
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for _ in range(epochs):
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr) - BATCH + 1, BATCH):
            idx = order[i : i + BATCH]
            opt.zero_grad()
            y = {t.name: ytr[t.name][idx] for t in tasks}
            record = composer.backward(model(xtr[idx]), y)
            opt.step()
            for name, w in record.task_weights().items():
                if w is not None:
                    sums[name] = sums.get(name, 0.0) + w
                    counts[name] = counts.get(name, 0) + 1
            m = _multipliers(composer.method)
            if m:
                per_task: dict[str, float] = {}
                for key, v in m.items():
                    per_task[key.task] = per_task.get(key.task, 0.0) + v
                positive = [v for v in per_task.values() if v > 0]
                if len(positive) > 1:
                    worst = max(worst, max(positive) / min(positive))
    composer.close()
    if hasattr(composer.method, "tracker"):  # a LossRAG policy: its mean weights
        WEIGHTS.setdefault(label, []).append({n: sums[n] / counts[n] for n in sums})
        SWITCHED.setdefault(label, []).append(
            {
                n: list(ids)
                for n, ids in composer.method.active.items()
                if ids != [composer.method.natural[n]]
            }
        )
    model.eval()
    with torch.no_grad():
        out = model(xte)
    return {
        t.name: metric(t, out[t.name], yte[t.name]) / UNITS.get(t.name, (0.0, 1.0))[1]
        for t in tasks
        if t.name in yte
    }, worst


def delta_m(scores: dict[str, float], stl: dict[str, float]) -> float:
    """Mean relative loss of performance against single-task learning, in % (lower is better, as
    in the suite)."""
    signs = [
        (-1 if HIGHER_IS_BETTER[t.metric or "mae"] else 1)
        * (scores[t.name] - stl[t.name])
        / stl[t.name]
        for t in TASKS
    ]
    return 100 * sum(signs) / len(signs)


def _fmt(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f}±{sd:.3f}"


def main() -> None:
    """Parse the arguments, run every method and seed, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--methods", nargs="+", default=["stl", "ew", "famo", "default", "geometricmean"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="a setting of the default policy to override (load_policy('default', KEY=value))",
    )
    parser.add_argument("--json", help="write the per-seed results here")
    parser.add_argument("--table", help="print the table of a --json file and exit")
    parser.add_argument(
        "--targets",
        choices=["standard", "raw", "outliers", "flipped", "junk"],
        default="standard",
        help="raw: ink = 1e3 + 1e2·z, row = 1e-3·z (MAE reported in units of z); outliers: 15 %% "
        "of the training ink targets get a gross error (test clean); flipped: 40 %% of the "
        "training digit labels replaced by a random class (test clean); junk: two more tasks "
        "trained, never scored, whose targets carry no signal (shuffled labels, pure noise)",
    )
    parser.add_argument(
        "--popart", action="store_true", help="run the target-normalisation measurement instead"
    )
    parser.add_argument(
        "--holdout",
        type=int,
        default=0,
        help="hold out this many training images (every method trains without them) as the "
        "query set of the METHOD+query arms",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    global DATA, VAL
    if args.targets == "raw":
        UNITS.update(_RAW_UNITS)
        DATA = data(units=True)
    elif args.targets == "outliers":
        DATA = data(outliers=0.15)
    elif args.targets == "flipped":
        DATA = data(flipped=0.4)
    elif args.targets == "junk":
        DATA = data(junk=True)
    if args.holdout:
        xtr, ytr, xte, yte = DATA
        keep = len(xtr) - args.holdout
        VAL = xtr[keep:], {k: v[keep:] for k, v in ytr.items()}
        DATA = xtr[:keep], {k: v[:keep] for k, v in ytr.items()}, xte, yte
    if args.table:
        with open(args.table) as f:
            saved = json.load(f)
        report(saved["results"], saved["ratios"])
        return
    if args.popart:
        popart(args.seeds, args.epochs)
        return
    overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.override)}
    results: dict[str, list[dict[str, float]]] = {}
    ratios: dict[str, list[float]] = {}
    for method in args.methods:
        t0 = time.perf_counter()
        for seed in args.seeds:
            if method.startswith("stl"):  # stl or stl+popart: EW on each task alone
                scores = {}
                for task in TASKS:
                    scores.update(run("ew" + method[3:], seed, args.epochs, [task])[0])
                ratio = math.nan
            else:
                tasks = TASKS + JUNK if args.targets == "junk" else TASKS
                scores, ratio = run(method, seed, args.epochs, tasks, overrides=overrides)
            results.setdefault(method, []).append(scores)
            ratios.setdefault(method, []).append(ratio)
        print(f"# {method}: {time.perf_counter() - t0:.0f} s", flush=True)
    report(results, ratios)
    weights_report()
    if args.json:
        with open(args.json, "w") as f:
            saved = {"results": results, "ratios": ratios, "overrides": overrides}
            json.dump({**saved, "weights": WEIGHTS, "switched": SWITCHED}, f, indent=1)


def report(results: dict[str, list[dict[str, float]]], ratios: dict[str, list[float]]) -> None:
    """Print the table: metric per task (mean ± std), Δm vs STL, starved tasks, ratio."""
    mean = {
        m: {t.name: statistics.mean(r[t.name] for r in rs) for t in TASKS}
        for m, rs in results.items()
    }
    ref = "stl+popart" if "stl+popart" in mean else "stl"  # Δm's single-task reference
    best: dict[str, float] = {}
    if "ew" in mean and "famo" in mean:
        for t in TASKS:
            pick = max if HIGHER_IS_BETTER[t.metric or "mae"] else min
            best[t.name] = pick(mean["ew"][t.name], mean["famo"][t.name])
    head = f"{'method':<34}" + "".join(
        f"{t.name + ' (' + (t.metric or '') + ')':>19}" for t in TASKS
    )
    print(head + f"{'Δm % (↓)':>13}  {'max mult ratio':>15}  starved")
    for m, rs in results.items():
        cells = "".join(f"{_fmt([r[t.name] for r in rs]):>19}" for t in TASKS)
        dm = f"{statistics.mean(delta_m(r, mean[ref]) for r in rs):+.2f}" if ref in mean else "-"
        starved = []
        for t in TASKS:
            if t.name not in best:
                continue
            v, b = mean[m][t.name], best[t.name]
            worse = (b - v) / b if HIGHER_IS_BETTER[t.metric or "mae"] else (v - b) / b
            if worse > 0.03:
                starved.append(f"{t.name}({100 * worse:.0f}%)")
        finite = [x for x in ratios.get(m, []) if math.isfinite(x) and x > 1.0]
        ratio = f"{max(finite):.1f}" if finite else "-"
        print(f"{m:<34}{cells}{dm:>13}  {ratio:>15}  {', '.join(starved) or '-'}")


def weights_report() -> None:
    """Each LossRAG policy's mean weight per task (mean over seeds), and in how many seeds every
    junk task (:data:`JUNK`) got less than every scored task."""
    junk = {t.name for t in JUNK}
    for method, seeds in WEIGHTS.items():
        names = list(seeds[0])
        cells = "  ".join(f"{n} {statistics.mean(s[n] for s in seeds):.3f}" for n in names)
        below = sum(
            max(s[n] for n in names if n in junk) < min(s[n] for n in names if n not in junk)
            for s in seeds
            if junk & set(s)
        )
        tail = (
            f"  (junk below every scored task in {below}/{len(seeds)} seeds)"
            if junk & set(names)
            else ""
        )
        print(f"mean weights, {method}: {cells}{tail}")
    for method, seeds in SWITCHED.items():
        print(f"active losses at the end, {method}: " + "; ".join(map(str, seeds)))


def popart(seeds: Sequence[int], epochs: int) -> None:
    """Target normalisation (:class:`lossrag.targets.TargetNormalizer`) on an MLP with a
    regression of offset 1e3 and scale 1e2 beside a unit-scale one, equal weights, Adam: test MAE
    in the targets' units without it, with it, and with the targets standardised by hand."""
    from lossrag.targets import TargetNormalizer

    gen = torch.Generator().manual_seed(99)
    x = torch.randn(5000, 8, generator=gen)
    f1 = torch.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2]
    f2 = torch.tanh(x[:, 3] + x[:, 4]) - 0.5 * x[:, 5] ** 2
    y = {
        "big": 1e3 + 1e2 * (f1 + 0.1 * torch.randn(5000, generator=gen)),
        "unit": f2 + 0.1 * torch.randn(5000, generator=gen),
    }
    tasks = [Task("big", kind="regression"), Task("unit", kind="regression")]
    tr, te = slice(0, 4000), slice(4000, None)
    mean = {k: v[tr].mean() for k, v in y.items()}
    std = {k: v[tr].std() for k, v in y.items()}

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
            self.heads = nn.ModuleDict({t.name: nn.Linear(64, 1) for t in tasks})

        def forward(self, x: Tensor) -> dict[str, Tensor]:
            z = self.trunk(x)
            return {n: h(z).squeeze(-1) for n, h in self.heads.items()}

    results: dict[str, list[dict[str, float]]] = {}
    for mode in ("raw", "popart", "by hand"):
        for seed in seeds:
            torch.manual_seed(seed)
            model = MLP()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            norm = TargetNormalizer(tasks) if mode == "popart" else None
            if norm is not None:
                norm.attach(model)
            order_gen = torch.Generator().manual_seed(seed)
            pending, step = None, 0
            for _ in range(epochs):
                order = torch.randperm(4000, generator=order_gen)
                for i in range(0, 4000, BATCH):
                    idx = order[i : i + BATCH]
                    if norm is not None and pending is not None:
                        norm.apply(pending)
                    out = model(x[idx])
                    tgt = {k: v[idx] for k, v in y.items()}
                    loss = torch.zeros(())
                    if norm is not None:
                        if step == 0:
                            norm.locate(out)
                        pending = norm.observe(tgt)
                    for name in out:
                        o, t = out[name], tgt[name]
                        if norm is not None:
                            o, t = norm.normalized(name, o, t)
                        elif mode == "by hand":  # the model predicts standardised targets
                            t = (t - mean[name]) / std[name]
                        loss = loss + (o - t).pow(2).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    step += 1
            if norm is not None:
                notes = dict(norm.notes)
                norm.detach(model)
                assert not notes, notes
            with torch.no_grad():
                pred = model(x[te])
            if mode == "by hand":
                pred = {k: v * std[k] + mean[k] for k, v in pred.items()}
            results.setdefault(mode, []).append(
                {k: float((pred[k] - y[k][te]).abs().mean()) for k in y}
            )
    print(f"test MAE in the targets' units, Adam lr 1e-3, {epochs} epochs, seeds {list(seeds)}")
    print(f"{'targets':<12}{'big (1e3 + 1e2·f)':>22}{'unit':>18}")
    for mode, rs in results.items():
        print(f"{mode:<12}{_fmt([r['big'] for r in rs]):>22}{_fmt([r['unit'] for r in rs]):>18}")


DATA = data()

if __name__ == "__main__":
    main()
