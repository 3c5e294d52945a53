"""``lossrag train``: meta-train the policy's prior by evolution strategies over whole runs.

The trained parameters are the log of the prior's six coefficients, the log of the softmax
temperature and the logit of the weight floor (:data:`PARAMS`). One generation draws
``population`` fresh problems from the recipe's distribution; on each, two runs from the same
seed (same data, initialisation and batches) use the policy at ``θ + σε`` and ``θ − σε``, and the
reward is the mean over the scored tasks of ``log(metric₋ / metric₊)`` (signed so that positive
means the ``+`` run generalised better, clipped at ``clip``) on the problem's validation split.
The whole run is the horizon, so a weighting that helps early and hurts later is not rewarded:
this is the long-horizon signal against the one-step look-ahead's short-horizon bias.
``θ`` takes an Adam step along ``Σ r ε / (σ·population)``.

Every ``eval_every`` generations the meta-objective, the same log-ratio of the current policy
against equal weighting on ``eval_problems`` held-out generated problems, is measured and logged.
Equal weighting there normalises its targets as the policy does (``normalize_targets="auto"``),
so the objective measures the weighting, not the target normalisation (:data:`REFERENCE`; the
rewards of ES compare two policies and do not depend on it).

The online phase (a recipe's ``[online]``) then trains the correction Δφ with the online loop:
Reptile (Nichol et al., 2018) over runs in which the ES policy adapts Δφ from a query stream
(:mod:`lossrag.meta.online`, the one-step look-ahead). The whole-run meta-objective on the
held-out problems is the long-horizon check: the trained Δφ ships only if the frozen policy with
it beats the prior alone there by more than twice the standard error of the paired gain.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing as mp
import os
import sys
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress

from lossrag._util import atomic_write_bytes, atomic_write_text
from lossrag.policy.lossrag import FEATURES, LossRAG, LossRAGOnline
from lossrag.policy.net import Correction
from lossrag.policy.prior import Prior
from lossrag.train.generate import Distribution, sample_problem
from lossrag.train.recipe import Recipe

__all__ = [
    "ONLINE_CORRECTION",
    "PARAMS",
    "REFERENCE",
    "SHIP_STANDARD_ERRORS",
    "correction_gain",
    "initial_parameters",
    "policy_from",
    "policy_values",
    "train",
]

#: The trained parameters, in order (``log`` of each, ``logit`` of the floor).
PARAMS = (*Prior.model_fields, "temperature", "floor")
_PRIOR = len(Prior.model_fields)
#: Where ES starts a coefficient that the hand-set prior leaves at 0 (a log-parameter cannot).
_START_AT_ZERO = 0.25
_EVAL_OFFSET = 1_000_000  # held-out problems are numbered from here; training ones below
_FORMAT = 1
_ONLINE_OFFSET = 500_000  # problems of the online phase are numbered from here
#: The highest evidence floor (a share, below 1): a perturbation that carries a floor's
#: log-parameter past 0 gets this, no evidence passes it, and the run goes on.
_HIGHEST_FLOOR = math.nextafter(1.0, 0.0)
#: What the meta-objective compares the policy with (recorded in the card); cards written
#: before it was recorded compared it with EW on raw targets.
REFERENCE = "EW with targets normalised as the policy's (normalize_targets='auto')"
#: File of a policy folder holding the online phase's Δφ when it did not ship.
ONLINE_CORRECTION = "online_correction.npz"
#: The file of a work folder that :class:`_WorkLock` locks.
LOCK_FILE = ".lossrag-train.lock"
#: A correction's weights as nested lists (JSON, picklable): parameter name -> values.
Weights = dict[str, Any]


def initial_parameters() -> np.ndarray:
    """The untrained policy's parameters: the hand-set prior (a coefficient at 0 starts at
    0.25), temperature 1, floor 0.05."""
    prior = Prior()
    values = [getattr(prior, n) or _START_AT_ZERO for n in PARAMS[:_PRIOR]] + [1.0]
    return np.array([math.log(v) for v in values] + [math.log(0.05 / 0.95)])


def policy_values(theta: Sequence[float]) -> list[float]:
    """The values of :data:`PARAMS` (coefficients, temperature, floor) that ``theta`` encodes."""
    values = [math.exp(float(t)) for t in theta[: _PRIOR + 1]]
    return [*values, 1.0 / (1.0 + math.exp(-float(theta[_PRIOR + 1])))]


def policy_from(
    theta: Sequence[float],
    correction: Weights | None = None,
    *,
    online: bool = False,
    meta_lr: float = 3e-4,
) -> LossRAG:
    """The :class:`LossRAG` policy that ``theta`` (see :data:`PARAMS`) and the correction's
    ``weights`` (None: zero) describe; ``online`` adapts Δφ from a query stream."""
    values = policy_values(theta)
    named = dict(zip(PARAMS, values, strict=True))
    for floor in ("gross_floor", "label_floor"):  # a share below 1: ES may carry one past it
        named[floor] = min(named[floor], _HIGHEST_FLOOR)
    prior = Prior(**{k: named[k] for k in Prior.model_fields})
    cls = LossRAGOnline if online else LossRAG
    policy = cls(  # as the shipped policy (DefaultPolicy): targets far from unit scale normalised
        prior=prior,
        temperature=named["temperature"],
        floor=named["floor"],
        meta_lr=meta_lr,
        normalize_targets="auto",
    )
    if correction is not None:
        policy.correction.load_state_dict(_tensors(correction))
    return policy


def _tensors(weights: Weights) -> dict[str, Any]:
    import torch

    return {k: torch.tensor(v, dtype=torch.float32) for k, v in weights.items()}


def _weights(module: Correction) -> Weights:
    return {k: v.detach().tolist() for k, v in module.state_dict().items()}


def _run(
    job: tuple[Distribution, int, list[float] | None, Weights | None],
) -> dict[str, float]:
    """Validation metrics of one run: problem ``seed`` of ``dist`` with ``theta`` and a frozen
    correction (``theta`` None: the reference, EW with targets normalised as the policy's)."""
    import torch

    torch.set_num_threads(1)
    dist, seed, theta, correction = job
    problem = sample_problem(dist, seed)
    if theta is None:
        return _quiet_fit(problem, "ew", seed, normalize_targets="auto")
    return _quiet_fit(problem, policy_from(theta, correction), seed)


def _quiet_fit(problem: Any, policy: Any, seed: int, **options: Any) -> dict[str, float]:
    from lossrag.bench.fit import fit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit(problem, policy, seed, split="val", **options).metrics


def _adapt(job: tuple[Distribution, int, list[float], Weights, float]) -> Weights:
    """Δφ after one run of problem ``seed`` adapting it online from ``correction``."""
    import torch

    from lossrag.bench.fit import fit

    torch.set_num_threads(1)
    dist, seed, theta, correction, meta_lr = job
    policy = policy_from(theta, correction, online=True, meta_lr=meta_lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(sample_problem(dist, seed), policy, seed, split="val")
    return _weights(policy.correction)


def _log_ratio(
    better: dict[str, float], worse: dict[str, float], dist: Distribution, seed: int, clip: float
) -> float:
    """Mean over scored tasks of the signed ``log(worse / better)`` (> 0: ``better`` is)."""
    higher = sample_problem(dist, seed).higher_is_better
    total = 0.0
    for name, up in higher.items():
        a, b = max(better[name], 1e-12), max(worse[name], 1e-12)
        value = math.log(a / b) if up else math.log(b / a)
        total += max(-clip, min(clip, value if math.isfinite(value) else -clip))
    return total / len(higher)


class _Checkpoint:
    """The trainer's state, saved atomically after every generation (the last good one kept),
    with what it was written for: the recipe (its ES part, to name what changed) and the policy
    folder it writes."""

    def __init__(self, work: Path, recipe: Recipe, code: str, out: Path) -> None:
        self.path, self.previous = work / "checkpoint.json", work / "checkpoint.prev.json"
        self.recipe, self.code, self.out = recipe, code, out

    def save(self, state: dict[str, Any]) -> None:
        if self.path.exists():
            os.replace(self.path, self.previous)
        fields = {
            "format": _FORMAT,
            "recipe": self.recipe.es_digest,
            "es_recipe": _es_part(self.recipe),
            "out": str(self.out),
            "params": PARAMS,
            "code": self.code,
        }
        atomic_write_text(self.path, json.dumps({**state, **fields}))

    def refuse_start(self) -> None:
        """Raise ``ValueError`` if a checkpoint is there (training from the start would lose
        it), saying whether its run finished and where its policy goes."""
        path = next((p for p in (self.path, self.previous) if p.exists()), None)
        if path is None:
            return
        work = path.parent
        try:
            state = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            state = None
        if not isinstance(state, dict):
            state = {}
        out = state.get("out")
        writing = f", writing {out}" if out else ""
        # an older checkpoint has no "finished": its online phase's held-out check ends a run
        if state.get("finished") or "with_correction" in (state.get("online") or {}):
            raise ValueError(
                f"train: {work} holds a finished run{writing}; pass another --work, or remove "
                f"{work}, to train again."
            )
        done = state.get("generation", "?")
        total = (state.get("es_recipe") or {}).get("es", {}).get("generations")
        raise ValueError(
            f"train: {work} holds the checkpoint of an unfinished run (generation {done}"
            f"{f' of {total}' if total else ''}{writing}); pass --resume to continue it, or "
            f"another --work (or remove {work}) to start over."
        )

    def load(self, console: Console) -> dict[str, Any] | None:
        for path in (self.path, self.previous):
            if not path.exists():
                continue
            try:
                state = json.loads(path.read_text())
                if not isinstance(state, dict) or state.get("format") != _FORMAT:
                    raise ValueError("not a checkpoint of this format")
                _check_fields(state)
            except (ValueError, UnicodeDecodeError) as err:
                console.print(f"[yellow]checkpoint {path} is corrupt ({err}); refused[/]")
                continue
            self._check(path, state, console)
            if path == self.previous:
                console.print(
                    f"resuming from the previous checkpoint {path} (generation "
                    f"{state['generation']})"
                )
            return state
        return None

    def _check(self, path: Path, state: dict[str, Any], console: Console) -> None:
        """Refuse a checkpoint written for another policy folder, another recipe (but for a
        longer or shorter ES phase that has not passed its end), other parameters."""
        if os.path.realpath(state.get("out", self.out)) != os.path.realpath(self.out):
            raise ValueError(
                f"train: {path} is the run writing {state['out']}, not {self.out}; continue it "
                f"with --out {state['out']}, or pass another --work for this one."
            )
        if state["recipe"] != self.recipe.es_digest:
            old = state.get("es_recipe")
            if old is None:
                raise ValueError(
                    f"train: {path} was written for another recipe, by a LossRAG that did not "
                    "record which fields it had: it resumes only with the recipe that wrote it. "
                    "Use another --work folder for this one, or remove that folder to start over."
                )
            changed = _changes(old, _es_part(self.recipe))
            if (
                set(changed) == {"es.generations"}
                and self.recipe.es.generations >= state["generation"]
            ):
                console.print(f"continuing with es.generations {changed['es.generations']}")
            else:
                said = "; ".join(f"{k} {v}" for k, v in changed.items())
                raise ValueError(
                    f"train: {path} was written for another recipe ({said}); only es.generations "
                    f"can change on --resume (to no fewer than the {state['generation']} done). "
                    "Use another --work folder for this one, or remove that folder to start over."
                )
        sizes = {len(state[k]) for k in ("theta", "m", "v")}
        saved = state.get("params")
        if saved is None:  # written before the names were saved: judged by its size
            fits = sizes == {len(PARAMS)}
            saved = list(PARAMS) if fits else [f"{len(state['theta'])} values"]
        if list(saved) != list(PARAMS) or sizes != {len(PARAMS)}:
            raise ValueError(
                f"train: {path} holds the parameters {', '.join(saved)}; this LossRAG trains "
                f"{', '.join(PARAMS)}. Start over without --resume (or with another --work)."
            )
        if state.get("code", self.code) != self.code:
            console.print(
                f"[yellow]resuming across a code change ({state['code']} -> {self.code}); the "
                "card records the code that finishes the training[/]"
            )


def _check_fields(state: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless ``state`` has a checkpoint's fields, of their types."""
    numbers = (int, float)
    kinds: dict[str, tuple[type, ...]] = {
        "history": (list,),
        "baseline": (dict,),
        "elapsed_s": numbers,
        "generation": (int,),
    }
    for key, kind in kinds.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise ValueError(f"{key} missing or not a {' or '.join(k.__name__ for k in kind)}")
    for key in ("theta", "m", "v"):
        values = state.get(key)
        if not isinstance(values, list) or not all(
            isinstance(x, numbers) and not isinstance(x, bool) for x in values
        ):
            raise ValueError(f"{key} missing or not a list of numbers")


def _es_part(recipe: Recipe) -> dict[str, Any]:
    """What the ES phase depends on (:attr:`Recipe.es_digest`), as JSON."""
    return json.loads(recipe.model_dump_json(include={"seed", "problems", "es"}))


def _changes(old: Any, new: Any, prefix: str = "") -> dict[str, str]:
    """``{"es.population": "2 -> 4", ...}``: the leaves of two JSON values that differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, str] = {}
        for key in sorted(set(old) | set(new)):
            out |= _changes(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return {} if old == new else {prefix.rstrip("."): f"{old} -> {new}"}


class _WorkLock:
    """An exclusive lock on a work folder (``flock`` on its file ``.lossrag-train.lock``, which
    names the holding process), held until :meth:`release` or the process ends: two runs never
    write one work folder. POSIX only; elsewhere nothing is locked."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.file: io.TextIOWrapper | None = None

    def take(self) -> None:
        """Lock the work folder if it exists and is not locked by this run yet; raise
        ``BlockingIOError`` naming the process that holds it."""
        if sys.platform == "win32" or self.file is not None or not self.work.is_dir():
            return
        import fcntl

        file = open(self.work / LOCK_FILE, "a+")  # noqa: SIM115 (held open: it holds the lock)
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "?"
            file.close()
            raise BlockingIOError(
                f"train: another run (process {holder}) is using --work {self.work}; wait for it "
                "to end, or pass another --work."
            ) from None
        file.truncate(0)
        file.write(f"{os.getpid()}\n")
        file.flush()
        self.file = file

    def release(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def train(
    recipe: Recipe,
    out: Path,
    work: Path,
    *,
    resume: bool = False,
    replace: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run ``recipe``: the policy folder goes to ``out`` (a policy already there is replaced
    only with ``replace``); checkpoints, the log and the plot of the meta-objective to ``work``.
    Returns the training summary written into the policy's card. Everything is checked before
    any folder is made or any run starts; a work folder another run is using is refused
    (``BlockingIOError``)."""
    lock = _WorkLock(work)
    try:
        return _train(recipe, out, work, lock, resume, replace, console or Console())
    finally:
        lock.release()


def _train(
    recipe: Recipe,
    out: Path,
    work: Path,
    lock: _WorkLock,
    resume: bool,
    replace: bool,
    console: Console,
) -> dict[str, Any]:
    import torch

    from lossrag.bench.runner import (
        advance,
        code_fingerprint,
        one_thread_per_worker,
        progress_columns,
    )
    from lossrag.policy.store import correction_bytes, read_card, save_policy, writable_folder

    target = writable_folder(out)  # before any work: a folder that is not a policy is kept
    if target.resolve() == work.resolve() or target.resolve() in work.resolve().parents:
        raise ValueError(f"train: --work {work} is inside --out {out}; keep them apart.")
    lock.take()  # an existing work folder: before its checkpoint is read
    checkpoint = _Checkpoint(work, recipe, code_fingerprint(), target)
    if not resume:  # first: --force would not get past a finished run in --work
        checkpoint.refuse_start()
    if (target / "card.json").is_file() and not replace:
        raise FileExistsError(
            f"train: --out {out} holds the policy {read_card(target).name!r}; pass --force to "
            "replace it when training ends, or choose another folder."
        )
    state = checkpoint.load(console) if resume else None
    target.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(target.parent, os.W_OK):
        raise PermissionError(f"train: cannot write the policy folder {out} (its parent).")
    work.mkdir(parents=True, exist_ok=True)
    lock.take()  # a new one: before anything is written
    es, dist = recipe.es, recipe.problems
    if resume and state is None:
        console.print(f"no checkpoint in {work}: starting from the beginning")
    if state is None:
        (work / "log.jsonl").unlink(missing_ok=True)
        theta = initial_parameters()
        state = {
            "generation": 0,
            "theta": theta.tolist(),
            "m": [0.0] * len(PARAMS),
            "v": [0.0] * len(PARAMS),
            "history": [],
            "baseline": {},
            "elapsed_s": 0.0,
        }
    state.pop("finished", None)
    eval_seeds = [_EVAL_OFFSET + recipe.seed * 10_000 + i for i in range(es.eval_problems)]
    one_thread_per_worker()
    started = time.perf_counter() - float(state["elapsed_s"])
    with (
        Progress(*progress_columns(), console=console) as progress,
        ProcessPoolExecutor(recipe.workers, mp_context=mp.get_context("spawn")) as pool,
    ):
        bar = progress.add_task(
            "train", total=es.generations, completed=state["generation"], last=""
        )
        if not state["baseline"]:
            baseline = pool.map(_run, [(dist, s, None, None) for s in eval_seeds])
            state["baseline"] = {str(s): m for s, m in zip(eval_seeds, baseline, strict=True)}
            state["reference"] = REFERENCE

        def objectives(theta: np.ndarray, correction: Weights | None = None) -> list[float]:
            """The log-ratio against EW on each held-out problem."""
            found = pool.map(_run, [(dist, s, theta.tolist(), correction) for s in eval_seeds])
            return [
                _log_ratio(m, state["baseline"][str(s)], dist, s, es.clip)
                for s, m in zip(eval_seeds, found, strict=True)
            ]

        def objective(theta: np.ndarray) -> float:
            return float(np.mean(objectives(theta)))

        theta = np.array(state["theta"])
        m, v = np.array(state["m"]), np.array(state["v"])
        if not state["history"]:
            state["history"].append({"generation": 0, "objective": objective(theta)})
        for done in state["history"][1:]:  # a run made longer: its old end is not evaluated
            if not _evaluated(done["generation"], es):
                done.pop("objective", None)
        for generation in range(state["generation"], es.generations):
            noise = np.random.default_rng([recipe.seed, 5, generation]).standard_normal(
                (es.population, len(PARAMS))
            )
            seeds = [
                recipe.seed * 10_000 + generation * es.population + i for i in range(es.population)
            ]
            jobs = [
                (dist, s, (theta + sign * es.sigma * e).tolist(), None)
                for s, e in zip(seeds, noise, strict=True)
                for sign in (1.0, -1.0)
            ]
            runs = list(pool.map(_run, jobs))
            rewards = np.array(
                [
                    _log_ratio(runs[2 * i], runs[2 * i + 1], dist, s, es.clip)
                    for i, s in enumerate(seeds)
                ]
            )
            grad = (rewards[:, None] * noise).sum(0) / (es.sigma * es.population)
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad**2
            t = generation + 1
            theta = theta + es.lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
            entry: dict[str, Any] = {
                "generation": t,
                "reward_mean_abs": float(np.abs(rewards).mean()),
                "theta": dict(zip(PARAMS, theta.round(4).tolist(), strict=True)),
                "grad": dict(zip(PARAMS, grad.round(4).tolist(), strict=True)),
            }
            if _evaluated(t, es):
                entry["objective"] = objective(theta)
            state["history"].append(entry)
            # the whole history each time: a generation redone after a resume is logged once
            atomic_write_text(work / "log.jsonl", _log(state["history"]))
            state.update(
                generation=t,
                theta=theta.tolist(),
                m=m.tolist(),
                v=v.tolist(),
                elapsed_s=time.perf_counter() - started,
            )
            checkpoint.save(state)
            last = entry.get("objective")
            advance(progress, bar, "" if last is None else f"objective {last:+.4f}")
        if "objective" not in state["history"][-1]:  # a resume at the end of a shorter run
            state["history"][-1]["objective"] = objective(theta)
        atomic_write_text(work / "log.jsonl", _log(state["history"]))
        checkpoint.save(state)
        online = _online_phase(recipe, state, checkpoint, objectives, pool, progress)
    curve = [(h["generation"], h["objective"]) for h in state["history"] if "objective" in h]
    _plot(curve, work / "meta_objective.png")
    summary = {
        "problems": es.generations * es.population,
        "runs": 2 * es.generations * es.population + es.eval_problems * (1 + len(curve)),
        "generations": es.generations,
        "elapsed_s": round(float(state["elapsed_s"]) + online.get("elapsed_s", 0.0), 1),
        "workers": recipe.workers,
        "parameters": {
            k: round(v, 5) for k, v in zip(PARAMS, policy_values(theta.tolist()), strict=True)
        },
        "objective": [{"generation": g, "log_ratio_vs_ew": round(o, 5)} for g, o in curve],
        # a checkpoint of older code compared with EW on raw targets
        "reference": state.get("reference", "EW on raw targets"),
        "online": {k: v for k, v in online.items() if k != "phi"},
    }
    shipped = online["phi"] if online.get("shipped") else None
    extra = {name: (work / name).read_bytes() for name in ("meta_objective.png", "log.jsonl")}
    if "phi" in online and shipped is None:  # kept beside the policy, for ablations
        trained = policy_from(theta.tolist(), online["phi"]).correction
        extra[ONLINE_CORRECTION] = correction_bytes(trained)
    with torch.random.fork_rng():  # a correction that does not ship: the same after a resume
        torch.manual_seed(recipe.seed)
        policy = policy_from(theta.tolist(), shipped)
    save_policy(
        policy,
        out,
        name=recipe.name,
        description=recipe.description,
        recipe=recipe.model_dump(mode="json"),
        training=summary,
        code=code_fingerprint(),
        extra=extra,
    )
    checkpoint.save(state | {"finished": True})
    return summary


def _evaluated(generation: int, es: Any) -> bool:
    """Whether the held-out meta-objective is measured after ``generation``."""
    return generation % es.eval_every == 0 or generation == es.generations


def _log(history: list[dict[str, Any]]) -> str:
    """``log.jsonl``: one line per generation."""
    return "".join(json.dumps(entry) + "\n" for entry in history)


def _online_phase(
    recipe: Recipe,
    state: dict[str, Any],
    checkpoint: _Checkpoint,
    objectives: Any,
    pool: ProcessPoolExecutor,
    progress: Progress,
) -> dict[str, Any]:
    """Reptile over the online loop (see the module docstring), checkpointed every round in
    ``state["online"]``; returns it with the held-out objectives and whether Δφ ships
    (:func:`correction_gain`)."""
    import torch

    from lossrag.bench.runner import advance

    spec, dist, theta = recipe.online, recipe.problems, state["theta"]
    if spec.rounds == 0:
        return {"rounds": 0, "shipped": False}
    if state.get("online", {}).get("recipe") != recipe.online_digest:
        torch.manual_seed(recipe.seed)
        state["online"] = {
            "recipe": recipe.online_digest,
            "round": 0,
            "phi": _weights(Correction(FEATURES)),
            "drift": [],
            "elapsed_s": 0.0,
        }
    online = state["online"]
    started = time.perf_counter() - float(online["elapsed_s"])
    bar = progress.add_task("online", total=spec.rounds, completed=online["round"], last="online")
    for r in range(online["round"], spec.rounds):
        seeds = [
            _ONLINE_OFFSET + recipe.seed * 10_000 + r * spec.population + i
            for i in range(spec.population)
        ]
        jobs = [(dist, s, theta, online["phi"], spec.meta_lr) for s in seeds]
        adapted = [_tensors(w) for w in pool.map(_adapt, jobs)]
        phi = _tensors(online["phi"])
        drift = 0.0
        for k, v in phi.items():
            move = torch.stack([a[k] for a in adapted]).mean(0) - v
            phi[k] = v + spec.step * move
            drift += float(move.pow(2).sum())
        online.update(round=r + 1, phi={k: v.tolist() for k, v in phi.items()})
        online["drift"].append(round(drift**0.5, 6))
        online["elapsed_s"] = time.perf_counter() - started
        checkpoint.save(state)
        advance(progress, bar, f"online: |mean adapted Δφ - Δφ| {drift**0.5:.4f}")
    if "gain_se" not in online:  # not measured yet, or by older code with another rule
        alone = objectives(np.array(theta))
        corrected = objectives(np.array(theta), online["phi"])
        online["prior_only"] = float(np.mean(alone))
        online["with_correction"] = float(np.mean(corrected))
        online["gain_se"], online["shipped"] = correction_gain(alone, corrected)
        online["elapsed_s"] = time.perf_counter() - started
        checkpoint.save(state)
    kept = {k: v for k, v in online.items() if k != "recipe"}
    return kept | {"rounds": spec.rounds, "problems": spec.rounds * spec.population}


#: The correction ships when its mean held-out gain exceeds this many standard errors.
SHIP_STANDARD_ERRORS = 2.0


def correction_gain(
    alone: Sequence[float], corrected: Sequence[float]
) -> tuple[float | None, bool]:
    """The standard error of the correction's gain in the held-out objective, paired problem by
    problem (None for a single problem), and whether the correction ships: its mean gain must
    exceed :data:`SHIP_STANDARD_ERRORS` standard errors (a gain the size of the problems' noise,
    which a plain comparison of the two means would take, is not one; one problem never
    tells)."""
    gains = np.subtract(corrected, alone)
    if len(gains) < 2 or not np.isfinite(gains).all():
        return None, False
    se = float(gains.std(ddof=1) / math.sqrt(len(gains)))
    return se, float(gains.mean()) > SHIP_STANDARD_ERRORS * se


def _plot(curve: list[tuple[int, float]], path: Path) -> None:
    """The meta-objective (log-ratio against EW on held-out problems) over generations, on an
    axis fitted to it (EW, at 0, is drawn only when the curve reaches within its own range of
    it: a line at 0 flattened a curve rising from 0.547 to 0.568)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if curve:
        values = [o for _, o in curve]
        ax.plot([g for g, _ in curve], values, marker="o")
        low, high = min(values), max(values)
        if low - (high - low) <= 0.0 <= high + (high - low):
            ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("generation")
    ax.set_ylabel("mean log-ratio vs EW, held-out")
    ax.set_title("meta-objective (higher is better)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
