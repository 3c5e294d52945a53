"""Target normalisation for regression tasks: PopArt (van Hasselt et al. 2016; multi-task PopArt,
Hessel et al. 2019).

A regression target with a large offset or an odd scale (prices around 1e3, a quantity in
1e-4 units) makes every loss weighting fight the units: the loss is dominated by the offset until
the head's bias has crawled there (an optimizer such as Adam moves it by about the learning rate
per step), and the task's share of the gradient depends on its units. :class:`TargetNormalizer`
keeps running statistics ``μ, σ`` of each regression target and trains the task on standardised
targets ``(t − μ)/σ`` instead.

*Where the head is a final* ``nn.Linear`` (found during a forward, :meth:`~TargetNormalizer.attach`
and :meth:`~TargetNormalizer.locate`), the head is re-parametrised: its parameters ``W, b`` hold
the *normalised* head, and a forward hook maps its output to the user's units, ``y = σ·raw + μ``.
The loss is taken on ``raw`` against ``(t − μ)/σ``. At the first batch the user's randomly
initialised head is *reinterpreted* as the normalised head, so the model's output starts near
``μ`` instead of near 0: the offset is learned at once, which is where PopArt's benefit on large
offsets comes from. A head whose outputs already predict the targets at the first batch (a
trained model wrapped again to fine-tune it: their mean squared error below a quarter of the
targets' mean square, four times closer than the outputs near zero of a freshly initialised
head) is not reinterpreted: it is
left as it is for the first step (its loss takes ``(y − μ)/σ``) and rescaled into the normalised
head, ``W/σ``, ``(b − μ)/σ``, by the first :meth:`~TargetNormalizer.apply`, so that its outputs
are kept (a fused head shared with a fresh task too). When the statistics move later,
``W`` and ``b`` are rescaled in place so that the outputs in user units are preserved exactly
(PopArt's "ART"):
``W' = σ W/σ'``, ``b' = (σ b + μ − μ')/σ'``. :meth:`~TargetNormalizer.detach` folds ``σ, μ`` back
into ``W, b`` (``W = σW``, ``b = σb + μ``) and removes every hook: the model is plain again.

A fused head (one ``Linear(width, T)`` whose output columns ``out[:, i]`` are T tasks'
outputs) is re-parametrised per column. *Where the head is not a final* ``nn.Linear`` (the
output passes through another operation, a bias-free or twice-called layer, ...)
the task falls back to loss-only normalisation: the model is left as it is and the loss compares
``(y − μ)/σ`` with ``(t − μ)/σ``; :attr:`~TargetNormalizer.notes` says why.

Statistics: per task, an exponential moving average of the mean (per output dimension) and of the
variance with factor ``max(beta, n/N)`` (``n`` the batch's targets, ``N`` all targets seen):
the exact running average until ``N ≥ n/beta``, an EMA with memory ``≈ 1/beta`` observed batches
after. A supervised target is stationary, so the exact average is what one wants early; ``beta``
(default ``1e-3``, inside PopArt's range of 3e-4 to 1e-2) only bounds the memory, so a drifting
target is still followed while the rescaling it causes stays small from step to step. The
statistics take in every batch of the first ``warmup`` steps (64) and one batch in ``every`` (16)
after (:meth:`~TargetNormalizer.due`): observing and folding a batch are about forty small tensor
operations, a third of a small model's step, while after a few dozen batches ``μ, σ`` are known to
a fraction of a percent. A target with several dimensions gets a mean per dimension but *one*
``σ``, the root of the dimensions' mean variance: the loss ``|(y − μ)/σ − (t − μ)/σ|`` is then
the user's loss over ``σ`` (for L2, over ``σ²``), the relative weight of the dimensions inside the
task unchanged; a ``σ`` per dimension would silently re-weight them (on ``mnist1d``'s
40-dimensional ``denoise`` target it cost the task's MAE). Until some batch shows a variance (a
first batch of identical targets, or of one sample: the first micro-batch of ``accumulate(n)``)
``σ`` is the larger of 1 (the target's own units) and the targets' magnitude ``|μ|``, so that the
rest of an accumulated first step does not train on residuals in the hundreds (a *fallback*,
recorded); after, it is at least ``1e-6·|μ| + 1e-12``. A batch whose statistics are not finite
leaves them unchanged and is counted in ``skipped`` (a non-finite *first* batch leaves ``μ = 0,
σ = 1`` until a finite batch is applied; the composer therefore starts the normaliser at the
first batch whose regression targets are all finite, a step with a NaN target being skipped).

Order of calls in a training step (nothing here synchronises host and device)::

    normalizer = TargetNormalizer(tasks)
    normalizer.attach(model)                       # once, before the first forward
    # every step:
    if pending is not None:                        # at the start of a training forward,
        normalizer.apply(pending)                  # e.g. in a forward pre-hook: rescale W, b
    outputs = model(x)
    if first_step:
        normalizer.locate(outputs)                 # finds the heads; the temporary hooks go
    if normalizer.due(step):                       # the batches the statistics take in
        pending = normalizer.observe(targets)      # all-reduce (sum) it under DDP
    for task in regression tasks:
        out_n, tgt_n = normalizer.normalized(task.name, outputs[task.name], targets[task.name])
        ...                                        # the task's loss on (out_n, tgt_n)
    loss.backward(); opt.step()
    ...
    normalizer.detach(model)                       # at the end: a plain model in user units

Details the caller should know:

- The forward in which :meth:`~TargetNormalizer.locate` finds the heads ran without the
  transform: its regression outputs are the raw head outputs (user units from the next forward
  on); :meth:`~TargetNormalizer.normalized` accounts for it. A resumed run (state loaded before or
  after :meth:`~TargetNormalizer.attach`) finds its heads by name and needs no locating forward.
- Any other forward (a re-evaluation after the step, a look-ahead through
  ``torch.func.functional_call``) gives outputs in user units: pass them through
  :meth:`~TargetNormalizer.normalized` too before taking a loss against normalised targets.
- DDP: the first batch's moments are summed over the ranks (:meth:`~TargetNormalizer.begin`,
  the caller's all-reduce) and set the provisional ``μ, σ`` that only that step's loss uses, the
  same on every rank (without :meth:`~TargetNormalizer.begin` each rank uses its own batch); the
  first :meth:`~TargetNormalizer.apply`, with the summed statistics, reinterprets the head instead
  of rescaling it, so every rank holds the same ``μ, σ, W, b`` after.
- The transform computes in at least float32 (under bf16/fp16 autocast a regression output
  comes out float32). ``μ, σ`` are tensors updated in place, so ``torch.compile`` does not
  recompile when they change (checked on CPU: two graphs over 30 steps).

>>> import torch
>>> from torch import nn
>>> from lossrag import Task
>>> class Net(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.head = nn.Linear(3, 1)
...     def forward(self, x):
...         return {"price": self.head(x).squeeze(-1)}
>>> torch.manual_seed(0) and None
>>> net, norm = Net(), TargetNormalizer([Task("price", kind="regression")])
>>> norm.attach(net)
>>> x, t = torch.randn(8, 3), 1000 + 10 * torch.randn(8)
>>> out = net(x)
>>> norm.locate(out)
>>> norm.apply(norm.observe({"price": t}))
>>> round(float(net(x)["price"].detach().mean()) / 1000, 1)  # the head starts near the mean
1.0
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lossrag.tasks import Task

__all__ = ["FAR_OFFSET", "FAR_SCALE", "TargetNormalizer", "far_above_unit", "far_from_unit"]

#: ``auto`` normalises a target only when its first batch is far from standard units: ``σ``
#: outside ``[1/FAR_SCALE, FAR_SCALE]`` or its mean further than ``FAR_OFFSET·σ`` from 0.
FAR_SCALE, FAR_OFFSET = 10.0, 3.0
#: Samples after which the σ of a task whose first batch had no spread counts as known
#: (:meth:`TargetNormalizer.unsettled`).
SETTLED = 16
#: Relative and absolute floor of σ: below it a target counts as constant.
_REL_FLOOR, _ABS_FLOOR = 1e-6, 1e-12
#: Name parts that wrappers add in front of a model's modules (DDP, torch.compile).
_WRAPPERS = ("module", "_orig_mod")


@dataclass
class _Stats:
    """Running statistics of one task's targets: views into :class:`_Flat`'s buffers.

    ``mean``/``var``: the running moments (``dim`` values each); ``count``: targets seen;
    ``valid``: whether some batch showed a variance; ``skipped``: non-finite batches; ``mu``,
    ``sigma``: the normalisation in force (the head's transform and the loss use these);
    ``ready``: whether ``mu, sigma`` were set (at the first :meth:`observe`)."""

    dim: int
    mean: Tensor
    var: Tensor
    count: Tensor
    valid: Tensor
    skipped: Tensor
    mu: Tensor
    sigma: Tensor
    ready: Tensor

    def tensors(self) -> dict[str, Tensor]:
        """The state tensors by name."""
        names = ("mean", "var", "count", "valid", "skipped", "mu", "sigma", "ready")
        return {k: getattr(self, k) for k in names}


@dataclass
class _Flat:
    """The statistics of all normalised tasks in one set of buffers, so that a step updates
    them with a handful of tensor operations whatever the number of tasks: per target
    dimension (``D`` in all) ``mean, var, mu, sigma`` (``μ, σ`` also in float32, ``mu32``,
    ``sigma32``, for float32 losses: ``loss32`` per task); per task (``T``) ``count, valid,
    skipped, ready``. ``seg[i]`` is the task of dimension ``i``, ``first[k]`` task ``k``'s
    first dimension, ``size[k]`` its number of dimensions. Each task's :class:`_Stats` holds
    views of its part. Nothing seen yet: ``μ = 0``, ``σ = 1``."""

    names: list[str]
    dims: list[int]
    seg: Tensor
    first: Tensor
    size: Tensor
    mean: Tensor
    var: Tensor
    mu: Tensor
    sigma: Tensor
    count: Tensor
    valid: Tensor
    skipped: Tensor
    ready: Tensor
    stats: dict[str, _Stats]
    mu32: Tensor
    sigma32: Tensor
    loss32: dict[str, tuple[Tensor, Tensor]]
    shaped_cache: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = field(default_factory=dict)

    @classmethod
    def build(
        cls, names: Sequence[str], dims: Sequence[int], device: torch.device, dtype: torch.dtype
    ) -> _Flat:
        """Empty statistics for ``names`` with ``dims`` values per target."""
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        total = sum(dims)
        sizes = torch.tensor(dims, device=device)
        starts = [0, *itertools.accumulate(dims)][:-1]
        flat = cls(
            names=list(names),
            dims=list(dims),
            seg=torch.repeat_interleave(torch.arange(len(dims), device=device), sizes),
            first=torch.tensor(starts, device=device, dtype=torch.long),
            size=sizes.to(dtype),
            mean=torch.zeros(total, **kw),
            var=torch.zeros(total, **kw),
            mu=torch.zeros(total, **kw),
            sigma=torch.ones(total, **kw),
            count=torch.zeros(len(dims), **kw),
            valid=torch.zeros(len(dims), device=device, dtype=torch.bool),
            skipped=torch.zeros(len(dims), **kw),
            ready=torch.zeros(len(dims), device=device, dtype=torch.bool),
            stats={},
            mu32=torch.zeros(total, device=device),
            sigma32=torch.ones(total, device=device),
            loss32={},
        )
        for k, (name, start, dim) in enumerate(zip(names, starts, dims, strict=True)):
            span = slice(start, start + dim)
            flat.stats[name] = _Stats(
                dim=dim,
                mean=flat.mean[span],
                var=flat.var[span],
                count=flat.count[k],
                valid=flat.valid[k],
                skipped=flat.skipped[k],
                mu=flat.mu[span],
                sigma=flat.sigma[span],
                ready=flat.ready[k],
            )
            flat.loss32[name] = (flat.mu32[span], flat.sigma32[span])
        return flat

    def per_task(self, x: Tensor) -> Tensor:
        """The mean of ``x`` (``D`` values) over each task's dimensions (``T`` values)."""
        return torch.zeros_like(self.size).index_add_(0, self.seg, x) / self.size

    def finite(self, *xs: Tensor) -> Tensor:
        """Per task, whether every value of ``xs`` (``D`` values each) is finite."""
        ok = torch.isfinite(xs[0])
        for x in xs[1:]:
            ok = ok & torch.isfinite(x)
        return self.per_task((~ok).to(self.size.dtype)) == 0

    def sigma_of(self, var: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
        """``(σ, valid)`` per task: one σ for all a target's dimensions, the root of their mean
        variance ``var``, floored relative to ``mean``; while no batch has shown a variance, the
        σ in force (1 at first) or the targets' magnitude ``|mean|`` if larger."""
        magnitude = self.per_task(mean.abs())
        floor = _REL_FLOOR * magnitude + _ABS_FLOOR
        root = self.per_task(var).sqrt()
        valid = self.valid | (root > floor)
        fallback = torch.maximum(self.sigma[self.first], magnitude)
        return torch.where(valid, torch.maximum(root, floor), fallback), valid

    def shaped(self, task: str, target: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``(μ, σ)`` of ``task`` in ``dtype`` on ``target``'s device, shaped to broadcast over
        its batch. Views of the buffers (updated in place between steps) are kept per
        ``(task, dtype, device, shape)``; a converted copy would go stale, so it is made anew."""
        shape = target.shape[1:] if target.dim() > 1 else ()
        key = (task, dtype, target.device, shape)
        pair = self.shaped_cache.get(key)
        if pair is not None:
            return pair
        stats = self.stats[task]
        mu, sigma = self.loss32[task] if dtype == torch.float32 else (stats.mu, stats.sigma)
        to: dict[str, Any] = {"device": target.device, "dtype": dtype}
        pair = (mu.to(**to).reshape(shape), sigma.to(**to).reshape(shape))
        if mu.dtype == dtype and mu.device == target.device:
            self.shaped_cache[key] = pair
        return pair


@dataclass
class _Head:
    """A re-parametrised ``nn.Linear``: the output columns of each task it is the head of
    (``{task: (first column, width)}``), the per-column ``μ, σ`` of its transform (0 and 1 on
    columns of no task; in float64 where the device has it, and in float32 for float32
    outputs), its hook and the last forward's ``(user-unit output, raw output)``."""

    module: nn.Linear
    columns: dict[str, tuple[int, int]]
    mu: Tensor
    sigma: Tensor
    mu32: Tensor
    sigma32: Tensor
    hook: RemovableHandle | None = None
    last: tuple[Tensor, Tensor] | None = None
    detached: bool = False


@dataclass
class _Group:
    """The located heads whose parameters share a device and dtypes, batched for one
    ``torch._foreach_*`` call per update: ``src[j]`` is the flat statistics dimension of the
    heads' ``j``-th output column (in order of the heads, ``sizes`` columns each; ``D``, one past
    the last, for a column of no task)."""

    heads: list[_Head]
    src: Tensor
    sizes: list[int]


@dataclass
class _Seen:
    """Outputs of the ``nn.Linear`` modules in the last forward (while attached)."""

    outputs: list[tuple[nn.Linear, Tensor, int | None]] = field(default_factory=list)
    calls: dict[int, int] = field(default_factory=dict)


def _pad(x: Tensor, value: float) -> Tensor:
    """``x`` with one more value at the end (the columns of no task read it)."""
    return torch.cat([x, x.new_full((1,), value)])


def _raw_view(output: Tensor, shown: Tensor, raw: Tensor) -> Tensor | None:
    """The view of ``raw`` that ``output`` is of ``shown`` (a head's output in user units and
    its raw output, same shape, both contiguous), or ``None`` when ``output`` is not ``shown``
    or a view of it."""
    if shown.shape != raw.shape:
        return None
    if output is shown:
        return raw
    if output._base is not shown:
        return None
    if not (shown.is_contiguous() and raw.is_contiguous()):
        return None
    offset = raw.storage_offset() + output.storage_offset() - shown.storage_offset()
    if output.is_contiguous() and output.numel() == raw.numel() and offset == raw.storage_offset():
        return raw.view(output.shape)  # the common ``head(x).squeeze(-1)``: a cheap backward
    return raw.as_strided(output.shape, output.stride(), offset)


def _in_user_units(head: _Head, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """A located head's ``W, b`` in user units, ``σW`` and ``σb + μ`` (new tensors)."""
    sigma = head.sigma.to(weight.device, weight.dtype).unsqueeze(1)
    return weight * sigma, bias * head.sigma.to(bias.device, bias.dtype) + head.mu.to(
        bias.device, bias.dtype
    )


def _report(
    values: list[float], names: list[str], dims: list[int], located: Mapping[str, float]
) -> dict[str, dict[str, float]]:
    """:meth:`TargetNormalizer.stats` from one copy of the flat statistics (``μ`` and ``σ``
    per dimension, then ``valid`` and ``skipped`` per task, of the tasks ``names`` with ``dims``
    dimensions each) for the tasks ``located`` (whether each task's head is located)."""
    total, count = sum(dims), len(dims)
    mu, sigma = values[:total], values[total : 2 * total]
    valid, skipped = values[2 * total : 2 * total + count], values[2 * total + count :]
    firsts = [0, *itertools.accumulate(dims)][:count]
    where = {name: (k, first) for k, (name, first) in enumerate(zip(names, firsts, strict=True))}
    out: dict[str, dict[str, float]] = {}
    for name, on in located.items():
        row = {"located": on, "fallback": 1.0, "skipped": 0.0}
        if name in where:
            k, first = where[name]
            span = slice(first, first + dims[k])
            row.update(fallback=float(not valid[k]), skipped=skipped[k])
            if dims[k] == 1:
                row.update(mu=mu[first], sigma=sigma[first])
            else:
                row.update({f"mu[{i}]": v for i, v in enumerate(mu[span])})
                row.update({f"sigma[{i}]": v for i, v in enumerate(sigma[span])})
        out[name] = row
    return out


def far_from_unit(mu: float, sigma: float) -> bool:
    """Whether a target with mean ``mu`` (the root mean square of its dimensions' means) and
    standard deviation ``sigma`` is far from standard units (:data:`FAR_SCALE`,
    :data:`FAR_OFFSET`)."""
    return not sigma >= 1 / FAR_SCALE or far_above_unit(mu, sigma)  # a NaN σ counts as far


def far_above_unit(mu: float, sigma: float) -> bool:
    """Whether such a target is far from standard units by its size: ``σ`` above
    :data:`FAR_SCALE` or its mean further than ``FAR_OFFSET·σ`` from 0."""
    return sigma > FAR_SCALE or abs(mu) > FAR_OFFSET * sigma


class TargetNormalizer:
    """PopArt target normalisation of the regression tasks among ``tasks`` (see the module).

    Args:
        tasks: The model's tasks; only the ``regression`` ones are normalised.
        beta: Smallest weight of a batch in the running statistics (PopArt's step size).
        every, warmup: The steps whose batches the statistics take in (:meth:`due`): every
            step before ``warmup``, every ``every``-th step after (see the module).
        auto: Normalise only the targets far from standard units (:func:`far_from_unit`),
            decided once from the first batch (:meth:`begin`); the others are left in the
            user's units, exactly as without a normaliser, with a note saying so. On targets
            already near unit scale PopArt only changes the head's effective step size in user
            units (``σ`` times Adam's), which cost the default policy 11 points of Δm on
            ``mnist1d-mtl`` (a 40-dimensional target with ``σ ≈ 0.12``), while it gains 60 and
            220 points on ``qm9-raw`` and ``offset-scale`` (``benchmarks/targets``).

    Attributes:
        notes: ``{task: why}`` for each regression task that falls back to loss-only
            normalisation (its head was not located), and for each statistic fallback.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        beta: float = 1e-3,
        auto: bool = False,
        every: int = 16,
        warmup: int = 64,
    ) -> None:
        if not 0 < beta <= 1:
            raise ValueError(f"TargetNormalizer: beta must be in (0, 1], got {beta}.")
        if every < 1 or warmup < 0:
            raise ValueError(
                f"TargetNormalizer: every must be >= 1 and warmup >= 0, got {every}, {warmup}."
            )
        self.beta, self.every, self.warmup = beta, every, warmup
        self.regression = [t.name for t in tasks if t.kind == "regression"]
        self.names = list(self.regression)
        #: whether the tasks to normalise are still to be chosen (``auto``, before a batch)
        self.choosing = auto
        self._dims: list[int] = []  # per regression task, its target's dimensions (begin)
        # task -> the first batch's (n, Σt, Σt²) over every rank, until observe() uses them
        self._provisional: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        #: Tasks whose outputs predicted their targets at the first batch (:meth:`begin`).
        self.user_units: set[str] = set()
        #: Tasks whose first batch, over every rank, showed no variance (:meth:`begin`): one
        #: sample (say, the first micro-batch of ``accumulate(n)``) or equal targets; σ is then
        #: the larger of 1 and their magnitude (the mean of the dimensions' ``|μ|``).
        self.spreadless: set[str] = set()
        self._settled: set[str] = set()  # of those, the ones a batch with a variance has reached
        #: Heads in user units, located at the first batch, re-parametrised at the first apply.
        self._deferred: list[tuple[nn.Linear, dict[str, tuple[int, int]]]] = []
        self._saved_biases: dict[str, list[float]] = {}
        self.notes: dict[str, str] = {}
        self.heads: dict[str, _Head] = {}
        self._flat: _Flat | None = None  # the statistics, from the first observe()
        self._groups: list[_Group] | None = None  # the located heads, batched (rebuilt lazily)
        #: :meth:`frozen`'s reader of the statistics as they are, until they change
        self._frozen: Callable[[], dict[str, dict[str, float]]] | None = None
        self._observed: set[str] = set()  # tasks whose first batch set the provisional μ, σ
        self._seen: _Seen | None = None
        self._temporary: list[RemovableHandle] = []
        self._model: nn.Module | None = None
        # task -> (qualified name of its head in the model, first output column, width)
        self._paths: dict[str, tuple[str, int, int]] = {}

    # ------------------------------------------------------------------ finding the heads
    def attach(self, model: nn.Module) -> None:
        """Register temporary forward hooks on ``model``'s ``nn.Linear`` modules (and a pre-hook on
        ``model`` that forgets the previous forward), so that :meth:`locate` can match outputs to
        heads after the next forward. Nothing about the model changes. Heads known from a loaded
        :meth:`state_dict` are re-parametrised at once (by their names in the model), so that a
        resumed run needs no locating forward."""
        self._remove_temporary()
        self._model = model
        self._resolve()
        if all(n in self.heads or n in self.notes for n in self.names):
            return
        seen = self._seen = _Seen()

        def clear(_module: nn.Module, _args: Any) -> None:
            seen.outputs.clear()
            seen.calls.clear()

        def record(module: nn.Module, _args: Any, out: Any) -> None:
            if isinstance(module, nn.Linear) and isinstance(out, Tensor):
                # traced by torch.compile, the version counter is the tracer's: not checked
                version = None if torch.compiler.is_compiling() else out._version
                seen.outputs.append((module, out, version))
                seen.calls[id(module)] = seen.calls.get(id(module), 0) + 1

        self._temporary.append(model.register_forward_pre_hook(clear))
        for module in model.modules():
            if isinstance(module, nn.Linear):
                self._temporary.append(module.register_forward_hook(record))

    def locate(self, outputs: Mapping[str, Tensor]) -> None:
        """Match each regression task's output of the last forward to the last ``nn.Linear`` whose
        output columns it is: all of them (the same tensor, or a view such as ``squeeze(-1)``)
        or some (``out[:, i]`` of a fused head ``Linear(width, T)`` shared by several tasks,
        each task re-parametrising its own rows of ``W, b``). Re-parametrise the located heads
        and remove the temporary hooks. A task without such a head falls back to loss-only
        normalisation, said in :attr:`notes`. The outputs of this forward are the heads' raw
        outputs; :meth:`normalized` knows it."""
        seen = self._seen or _Seen()
        self._remove_temporary()
        self._seen = None
        todo = [n for n in self.names if n not in self.heads and n not in self.notes]
        if todo and not seen.outputs:
            for name in todo:
                self.notes[name] = "loss-only: no forward was seen between attach() and locate()"
            return
        groups: dict[int, tuple[nn.Linear, Tensor, dict[str, tuple[int, int]]]] = {}
        for name in todo:
            found = self._match(outputs.get(name), seen)
            if isinstance(found, str):
                self.notes[name] = f"loss-only: {found}"
            else:
                module, raw, cols = found
                groups.setdefault(id(module), (module, raw, {}))[2][name] = cols
        for module, raw, columns in groups.values():
            spans = sorted(columns.values())
            if any(a + d > b for (a, d), (b, _) in itertools.pairwise(spans)):
                for name in columns:  # two tasks claim the same output column
                    self.notes[name] = f"loss-only: tasks share output columns of {module}"
                continue
            if any(name in self.user_units for name in columns):
                # a head computing in user units (a fused one: for one of its tasks) is left as
                # it is until the first apply() rescales and re-parametrises it; until then its
                # losses take (y − μ)/σ
                self.user_units |= set(columns)
                self._deferred.append((module, columns))
                continue
            self._reparametrise(module, columns, (raw, raw))

    def _match(
        self, output: Tensor | None, seen: _Seen
    ) -> tuple[nn.Linear, Tensor, tuple[int, int]] | str:
        """The head of ``output``, its raw output and the output columns ``(first, width)`` that
        ``output`` is (all of them, e.g. through ``squeeze(-1)``, or a slice ``raw[:, i]`` of a
        fused head), or why there is none."""
        if output is None:
            return "no output in the located forward"
        for module, raw, version in reversed(seen.outputs):
            if raw.untyped_storage().data_ptr() != output.untyped_storage().data_ptr():
                continue
            first = int(output.storage_offset() - raw.storage_offset())
            width = raw.shape[-1]
            if not raw.is_contiguous() or output.dim() == 0:
                return f"the output of its head {module} is not contiguous"
            if output.dim() == raw.dim() - 1 and output.shape == raw.shape[:-1]:
                cols = (first, 1)
                fits = output.stride() == raw.stride()[:-1]
            elif output.dim() == raw.dim() and output.shape[:-1] == raw.shape[:-1]:
                cols = (first, int(output.shape[-1]))
                fits = output.stride() == raw.stride()
            else:
                fits, cols = False, (0, 0)
            if not fits or not 0 <= cols[0] <= cols[0] + cols[1] <= width:
                return f"its output is a reshape of the output of {module}, not of its columns"
            if version is not None and (raw._version != version or output._version != version):
                return f"the output of its head {module} was modified in place"
            if seen.calls.get(id(module), 0) > 1:
                return f"its head {module} is called more than once per forward"
            if module.bias is None:
                return f"its head {module} has no bias, which PopArt needs"
            if not isinstance(module.weight, nn.Parameter) or not isinstance(
                module.bias, nn.Parameter
            ):
                return f"the weights of its head {module} are not plain parameters"
            return module, raw, cols
        return "its output is not (a view of) the output of an nn.Linear"

    def _path(self, module: nn.Module) -> str:
        """``module``'s qualified name in the attached model, without the prefixes that DDP
        (``module.``) and ``torch.compile`` (``_orig_mod.``) add."""
        assert self._model is not None
        found = next(n for n, m in self._model.named_modules() if m is module)
        return ".".join(p for p in found.split(".") if p not in _WRAPPERS)

    def _resolve(self) -> None:
        """Re-parametrise the heads named by a loaded state in the attached model."""
        if self._model is None:
            return
        modules = {
            ".".join(p for p in n.split(".") if p not in _WRAPPERS): m
            for n, m in self._model.named_modules()
        }
        groups: dict[str, dict[str, tuple[int, int]]] = {}
        for name, (path, first, width) in self._paths.items():
            if name not in self.heads:
                groups.setdefault(path, {})[name] = (first, width)
        for path, columns in groups.items():
            module = modules.get(path)
            end = max(a + d for a, d in columns.values())
            if (
                not isinstance(module, nn.Linear)
                or module.bias is None
                or module.out_features < end
            ):
                raise ValueError(
                    f"TargetNormalizer: the loaded state re-parametrised the head {path!r} of "
                    f"task(s) {', '.join(map(repr, columns))}, but the model has no such nn.Linear "
                    f"with a bias and at least {end} outputs; the state does not fit this model."
                )
            self._reparametrise(module, columns, None)

    def _reparametrise(
        self,
        module: nn.Linear,
        columns: dict[str, tuple[int, int]],
        last: tuple[Tensor, Tensor] | None,
    ) -> None:
        """Install the transform ``y = σ·raw + μ`` on ``module`` (per output column, from the
        statistics of the task owning it); ``last``: this forward's output and raw output, when
        the head was located by a forward."""
        weight = module.weight
        dtype = torch.float32 if weight.device.type == "mps" else torch.float64
        kw: dict[str, Any] = {"device": weight.device, "dtype": dtype}
        head = _Head(
            module,
            dict(columns),
            torch.zeros(module.out_features, **kw),
            torch.ones(module.out_features, **kw),
            torch.zeros(module.out_features, device=weight.device),
            torch.ones(module.out_features, device=weight.device),
            last=last,
        )

        def transform(_module: nn.Module, _args: Any, out: Tensor) -> Tensor:
            dtype = torch.promote_types(out.dtype, torch.float32)
            if dtype == torch.float32:  # apply() changes them between steps, never in one
                y = torch.addcmul(head.mu32, out.to(dtype), head.sigma32)
            else:
                sigma = head.sigma.to(out.device, dtype)
                y = torch.addcmul(head.mu.to(out.device, dtype), out, sigma)
            head.last = (y, out)
            return y

        head.hook = module.register_forward_hook(transform)
        path = self._path(module)
        for name, (first, width) in columns.items():
            self.heads[name] = head
            self._paths[name] = (path, first, width)
        self._groups = None
        self._sync()

    @property
    def _stats(self) -> dict[str, _Stats]:
        return {} if self._flat is None else self._flat.stats

    def _batched(self) -> list[_Group]:
        """The located heads (not detached), grouped by their parameters' device and dtypes."""
        flat = self._flat
        if self._groups is not None or flat is None:
            return self._groups or []
        where = {n: int(f) for n, f in zip(flat.names, flat.first.tolist(), strict=True)}
        groups: dict[tuple[Any, ...], tuple[list[_Head], list[int], list[int]]] = {}
        for head in {id(h): h for h in self.heads.values() if not h.detached}.values():
            weight, bias = head.module.weight, head.module.bias
            assert bias is not None  # checked by _match
            key = (weight.device, weight.dtype, bias.dtype, head.mu.device, head.mu.dtype)
            members, src, sizes = groups.setdefault(key, ([], [], []))
            cols = [sum(flat.dims)] * head.module.out_features
            for name, (first, width) in head.columns.items():
                if name in where:
                    cols[first : first + width] = range(where[name], where[name] + width)
            members.append(head)
            src.extend(cols)
            sizes.append(len(cols))
        self._groups = [
            _Group(members, torch.tensor(src, device=flat.mean.device), sizes)
            for members, src, sizes in groups.values()
        ]
        return self._groups

    def _sync(self) -> None:
        """Copy the tasks' ``μ, σ`` into their heads' columns (in place, no synchronisation)."""
        flat, self._frozen = self._flat, None
        if flat is None:
            return
        with torch.no_grad():
            flat.mu32.copy_(flat.mu)
            flat.sigma32.copy_(flat.sigma)
            mu, sigma = _pad(flat.mu, 0.0), _pad(flat.sigma, 1.0)
            for group in self._batched():
                head = group.heads[0]
                m = mu[group.src].to(head.mu.device, head.mu.dtype)
                s = sigma[group.src].to(head.mu.device, head.mu.dtype)
                heads = group.heads
                torch._foreach_copy_([h.mu for h in heads], m.split(group.sizes))
                torch._foreach_copy_([h.sigma for h in heads], s.split(group.sizes))
                torch._foreach_copy_([h.mu32 for h in heads], m.float().split(group.sizes))
                torch._foreach_copy_([h.sigma32 for h in heads], s.float().split(group.sizes))

    def _rescale(self, scale: Tensor, shift: Tensor) -> None:
        """PopArt's ART on every located head: ``W ← scale·W``, ``b ← scale·b + shift`` per
        output column (``scale``, ``shift``: one value per flat statistics dimension)."""
        scale, shift = _pad(scale, 1.0), _pad(shift, 0.0)
        for group in self._batched():
            weight, bias = group.heads[0].module.weight, group.heads[0].module.bias
            assert bias is not None
            w = scale[group.src].to(weight.device, weight.dtype).unsqueeze(1).split(group.sizes)
            b = scale[group.src].to(bias.device, bias.dtype).split(group.sizes)
            c = shift[group.src].to(bias.device, bias.dtype).split(group.sizes)
            biases = [h.module.bias for h in group.heads]
            torch._foreach_mul_([h.module.weight for h in group.heads], w)
            torch._foreach_mul_(biases, b)  # type: ignore[arg-type]
            torch._foreach_add_(biases, c)  # type: ignore[arg-type]

    def _remove_temporary(self) -> None:
        for handle in self._temporary:
            handle.remove()
        self._temporary = []

    # ------------------------------------------------------------------ choosing (auto)
    def first_moments(
        self, targets: Mapping[str, Tensor], outputs: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        """Per regression task, in order: the count and per dimension the sums of ``t`` and
        ``t²`` of the first batch, then the sum of squared errors ``Σ(y − t)²`` of its
        ``outputs`` (NaN without them), as one float64 tensor to sum across ranks for
        :meth:`begin`."""
        parts, self._dims = [], []
        for name in self.regression:
            if name not in targets:
                raise ValueError(f"TargetNormalizer: no target for the regression task {name!r}.")
            t = targets[name].detach().to(torch.float64)
            rows = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(-1, 1)
            count = torch.full((1,), rows.shape[0], dtype=torch.float64, device=rows.device)
            y = None if outputs is None else outputs.get(name)
            sse = (
                torch.full_like(count, float("nan"))
                if y is None or y.numel() != t.numel()
                else (y.detach().to(torch.float64).reshape(t.shape) - t).pow(2).sum().reshape(1)
            )
            self._dims.append(rows.shape[1])
            parts.append(torch.cat([count, rows.sum(0), rows.pow(2).sum(0), sse]))
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)

    def begin(self, moments: Tensor) -> None:
        """Start from the first batch's :meth:`first_moments`, summed over the ranks: with
        ``auto``, keep the targets far from standard units (:func:`far_from_unit`; read on the
        host, once); the provisional ``μ, σ`` of the first step then come from these global
        moments, so that step is the same on any number of ranks. A task whose outputs already
        predict its targets (their mean squared error below a quarter of the targets' mean
        square: a trained model wrapped again, not a fresh head) is *in user units*: :meth:`locate`
        leaves its head as it computes, and its first :meth:`apply` rescales it (read on the
        host, once). Before :meth:`locate`."""
        offset = 0
        self._provisional, errors = {}, {}
        for name, dim in zip(self.regression, self._dims, strict=True):
            end = offset + 2 + 2 * dim
            n, s1, s2 = (
                moments[offset : offset + 1],
                moments[offset + 1 : offset + 1 + dim],
                moments[offset + 1 + dim : end - 1],
            )
            self._provisional[name] = (n, s1, s2)
            errors[name] = (moments[end - 1 : end], n, s1, s2)
            offset = end
        if self.choosing:
            self._choose()
        self.user_units, self.spreadless = set(), set()
        for name in self.names:
            sse, n, s1, s2 = errors[name]
            # four times closer to the targets than outputs of zero (a fresh head's)
            if bool(sse < s2.sum() / 4):
                self.user_units.add(name)
            mean, var = self._moments(n, s1, s2)  # as sigma_of tells a variance
            if not bool(var.mean().sqrt() > _REL_FLOOR * mean.abs().mean() + _ABS_FLOOR):
                self.spreadless.add(name)

    def unsettled(self) -> set[str]:
        """Of the :attr:`spreadless` tasks, those whose σ is not known yet: still the fallback,
        or from fewer than :data:`SETTLED` samples (batches of one sample: σ from two or three
        samples made the loss 250 times too large); reads the device while there are some."""
        if self._settled >= self.spreadless:
            return set()
        flat = self._flat
        if flat is not None:
            known = (flat.valid & (flat.count >= SETTLED)).tolist()
            self._settled |= {n for n, ok in zip(flat.names, known, strict=True) if ok}
        return self.spreadless - self._settled

    def _choose(self) -> None:
        keep = []
        for name, (n, s1, s2) in self._provisional.items():
            mean, var = self._moments(n, s1, s2)
            mu, sigma = float(mean.pow(2).mean().sqrt()), float(var.mean().sqrt())
            if far_from_unit(mu, sigma):
                keep.append(name)
            else:
                self.notes[name] = (
                    f"user units: the first batch (mean {mu:.3g}, std {sigma:.3g}) is near "
                    "standard units (normalize_targets='auto')"
                )
        self.names, self.choosing, self._frozen = keep, False, None

    # ------------------------------------------------------------------ statistics
    def due(self, step: int) -> bool:
        """Whether step ``step``'s batch is to be observed (see ``every`` and ``warmup``)."""
        return step < self.warmup or step % self.every == 0

    def observe(self, targets: Mapping[str, Tensor]) -> Tensor:
        """This batch's statistics as one tensor to sum across ranks: per normalised task, in
        order, the count ``n``, then per target dimension of every task ``Σ(t − m)``, then
        ``Σ(t − m)²``, about the running mean ``m`` (the same on every rank; about it, a large
        offset keeps its precision). At a task's first batch this also sets ``μ, σ`` from the
        batch (from the global moments given to :meth:`begin`, else from this rank's), so the
        first step's loss is already normalised. No host-device synchronisation."""
        missing = [n for n in self.names if n not in targets]
        if missing:
            raise ValueError(
                f"TargetNormalizer.observe: no target for the regression task {missing[0]!r}."
            )
        if not self.names:
            return torch.zeros(0)
        rows = []
        for name in self.names:
            t = targets[name].detach()
            rows.append(t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(-1, 1))
        flat = self._layout(rows)
        with torch.no_grad():
            if len({r.shape[0] for r in rows}) == 1:  # one batch size: all tasks at once
                centred = torch.cat(rows, 1).to(flat.mean.dtype) - flat.mean
                s1, s2 = centred.sum(0), centred.pow(2).sum(0)
            else:
                spans = flat.mean.split(flat.dims)
                centred_each = [r.to(m.dtype) - m for r, m in zip(rows, spans, strict=True)]
                s1 = torch.cat([c.sum(0) for c in centred_each])
                s2 = torch.cat([c.pow(2).sum(0) for c in centred_each])
            n = torch.tensor([float(r.shape[0]) for r in rows], dtype=flat.mean.dtype)
            n = n.to(flat.mean.device)
            fresh = [name not in self._observed for name in flat.names]
            if any(fresh):  # never again: a graph may have saved μ, σ
                self._first(flat, n, s1, s2, fresh)
                self._observed.update(flat.names)
                self._sync()
        self._provisional = {}
        return torch.cat([n, s1, s2])

    def _layout(self, rows: Sequence[Tensor]) -> _Flat:
        """The statistics of :attr:`names` (created at the first batch, on its device, in
        float64 where the device has it), checked against ``rows``' shapes."""
        flat = self._flat
        if flat is None or flat.names != self.names:
            dims = [r.shape[1] for r in rows]
            device = rows[0].device
            dtype = torch.float32 if device.type == "mps" else torch.float64
            flat = self._flat = _Flat.build(self.names, dims, device, dtype)
            self._groups = None
        for name, r, dim in zip(flat.names, rows, flat.dims, strict=True):
            if r.shape[1] != dim:
                raise ValueError(
                    f"Task {name!r}: targets have {r.shape[1]} values per sample, the "
                    f"normaliser was set up for {dim}."
                )
        return flat

    def _first(self, flat: _Flat, n: Tensor, s1: Tensor, s2: Tensor, fresh: list[bool]) -> None:
        """Provisional ``μ, σ`` of the ``fresh`` tasks from their first batch: this rank's
        ``n, s1, s2``, or the global moments given to :meth:`begin` (before :meth:`apply` folds
        in the global statistics; only the first step's loss uses them)."""
        parts = zip(flat.names, n.split(1), s1.split(flat.dims), s2.split(flat.dims), strict=True)
        moments = [self._provisional.get(name, own) for name, *own in parts]
        n, s1, s2 = (torch.cat([m[i].to(flat.mean) for m in moments]) for i in range(3))
        d, var = self._moments(n[flat.seg], s1, s2)
        mu = flat.mean + d
        sigma, valid = flat.sigma_of(var, mu)
        new = torch.tensor(fresh, device=n.device) & ~flat.ready & flat.finite(mu, sigma[flat.seg])
        flat.mu.copy_(torch.where(new[flat.seg], mu, flat.mu))
        flat.sigma.copy_(torch.where(new[flat.seg], sigma[flat.seg], flat.sigma))
        flat.ready.copy_(flat.ready | new)
        flat.valid.copy_(flat.valid | (new & valid))  # a record of this step: no fallback

    @staticmethod
    def _moments(n: Tensor, s1: Tensor, s2: Tensor) -> tuple[Tensor, Tensor]:
        """Mean offset ``d = s1/n`` and variance ``s2/n − d²`` (guarded against n = 0)."""
        count = n.clamp_min(1)
        d = s1 / count
        return d, (s2 / count - d * d).clamp_min(0)

    def apply(self, stats: Tensor) -> None:
        """Fold ``stats`` (:meth:`observe`'s tensor, summed over the ranks) into the running
        statistics and rescale the located heads so that their outputs in user units are
        unchanged (PopArt's ART; at a task's first batch the head is reinterpreted instead).
        Call it between steps, never between a forward and its backward. Non-finite statistics
        leave a task as it was and are counted. No host-device synchronisation."""
        flat = self._flat
        if not self.names:
            return
        if flat is None:
            raise ValueError(
                "TargetNormalizer.apply: no statistics layout yet; call observe() first."
            )
        tasks, dims = len(flat.names), int(flat.seg.numel())
        if stats.numel() != tasks + 2 * dims:
            raise ValueError(
                f"TargetNormalizer.apply: expected {tasks + 2 * dims} statistics, got "
                f"{stats.numel()}."
            )
        stats = stats.to(flat.mean.device, flat.mean.dtype)
        with torch.no_grad():
            self._fold(flat, *stats.split([tasks, dims, dims]))
            deferred, self._deferred = self._deferred, []
            for module, columns in deferred:
                self._rescale_into(module, columns)
                self._reparametrise(module, columns, None)

    def _rescale_into(self, module: nn.Linear, columns: dict[str, tuple[int, int]]) -> None:
        """Turn a head computing in user units into the normalised head, ``W ← W/σ``,
        ``b ← (b − μ)/σ`` per output column, from the statistics just folded in."""
        stats, weight, bias = self._stats, module.weight, module.bias
        assert bias is not None  # checked by _match
        for name, (first, width) in columns.items():
            rows = slice(first, first + width)
            mu = stats[name].mu.to(bias.device, bias.dtype)
            sigma = stats[name].sigma.to(weight.device, weight.dtype)
            weight[rows].div_(sigma.unsqueeze(1))
            bias[rows].sub_(mu).div_(sigma)

    def _fold(self, flat: _Flat, n: Tensor, s1: Tensor, s2: Tensor) -> None:
        """One step of the running statistics of every task at once (see the module)."""
        seg = flat.seg
        count = n.clamp_min(1)[seg]
        d, q = s1 / count, s2 / count  # offset and 2nd moment about the mean
        total = flat.count + n
        w = torch.maximum(torch.full_like(n, self.beta), n / total.clamp_min(1))[seg]
        mean = flat.mean + w * d
        var = ((1 - w) * flat.var + w * q - w * w * d * d).clamp_min(0)
        sigma, valid = flat.sigma_of(var, mean)
        old = flat.sigma[flat.first]
        ok = (n > 0) & flat.finite(mean, var) & torch.isfinite(sigma)
        # ART: preserve σ·raw + μ (from the second batch on; the first reinterprets the head)
        go = ok & (flat.count > 0)
        scale = torch.where(go, old / sigma, torch.ones_like(sigma))[seg]
        shift = torch.where(go[seg], (flat.mu - mean) / sigma[seg], torch.zeros_like(mean))
        self._rescale(scale, shift)
        each = ok[seg]
        flat.mean.copy_(torch.where(each, mean, flat.mean))
        flat.var.copy_(torch.where(each, var, flat.var))
        flat.count.copy_(torch.where(ok, total, flat.count))
        flat.valid.copy_(torch.where(ok, valid, flat.valid))
        flat.skipped.add_((~ok & (n > 0)).to(flat.skipped.dtype))
        flat.mu.copy_(torch.where(each, mean, flat.mu))
        flat.sigma.copy_(torch.where(each, sigma[seg], flat.sigma))
        flat.ready.copy_(flat.ready | ok)
        self._sync()

    # ------------------------------------------------------------------ the loss
    def normalized(self, task: str, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """``(output_n, target_n)`` for the task's loss: ``(output − μ)/σ`` and
        ``(target − μ)/σ``; for a located head ``output_n`` is its raw output (the same value,
        without the round trip). A task that is not normalised is returned as it is."""
        flat = self._flat
        if task not in self.names or flat is None or task not in flat.stats:
            return output, target
        dtype = torch.promote_types(output.dtype, torch.float32)
        mu, sigma = flat.shaped(task, target, dtype)
        target_n = (target.to(dtype) - mu) / sigma
        head = self.heads.get(task)
        if head is not None and not head.detached and head.last is not None:
            raw = _raw_view(output, *head.last)
            if raw is not None:
                return raw, target_n
        return (output.to(dtype) - mu) / sigma, target_n

    # ------------------------------------------------------------------ records and state
    def stats(self) -> dict[str, dict[str, float]]:
        """``{task: {"mu", "sigma", "fallback", "located", "skipped"}}`` (per dimension
        ``mu[i]``, ``sigma[i]`` when a target has several values; flags as 0/1). Reads the
        device after the statistics changed (once in ``every`` steps)."""
        return self.frozen()()

    def frozen(self) -> Callable[[], dict[str, dict[str, float]]]:
        """:meth:`stats` as they are now, to be read later: a record read steps after its own
        shows its own step's statistics. After each change the statistics are copied on the
        device once (no synchronisation), with their layout, and read from the copy at most
        once (one device read)."""
        if self._frozen is None:
            flat = self._flat
            located = {n: float(n in self.heads and not self.heads[n].detached) for n in self.names}
            if flat is None:
                report = _report([], [], [], located)
                self._frozen = lambda: {name: dict(row) for name, row in report.items()}
            else:
                like = flat.mu
                copy = torch.cat([flat.mu, flat.sigma, flat.valid.to(like), flat.skipped.to(like)])
                layout = (list(flat.names), list(flat.dims))
                read: list[dict[str, dict[str, float]]] = []

                def reader() -> dict[str, dict[str, float]]:
                    if not read:
                        read.append(_report(copy.tolist(), *layout, located))
                    return {name: dict(row) for name, row in read[0].items()}

                self._frozen = reader
        return self._frozen

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: ``beta`` and each task's statistics (tensors).
        The located heads' parameters are the model's (normalised) ones: save the model while it
        is wrapped."""
        return {
            "beta": self.beta,
            "every": self.every,
            "warmup": self.warmup,
            "tasks": {
                n: {k: v.clone() for k, v in s.tensors().items()} for n, s in self._stats.items()
            },
            "heads": {n: list(p) for n, p in self._paths.items() if not self.heads[n].detached},
            "notes": dict(self.notes),
            "names": None if self.choosing else list(self.names),
            "spreadless": sorted(self.spreadless),
            # the located heads' biases as saved, to tell a model saved after close() on resume
            "biases": {
                self._path(h.module): h.module.bias.detach().double().cpu().tolist()
                for h in {id(h): h for h in self.heads.values() if not h.detached}.values()
                if h.module.bias is not None
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (into the existing tensors where there are some, so a
        compiled model's hooks keep reading the same ones). The heads it had re-parametrised are
        re-parametrised again, by name, in the model given to :meth:`attach` (now, or at the
        attach that follows); the model's own state (its normalised heads) is the user's to
        load. Tasks that fell back stay loss-only; with ``auto``, the tasks chosen stay chosen."""
        self.beta = float(state["beta"])
        # states from before the schedule observed every batch; they go on doing so
        self.every, self.warmup = int(state.get("every", 1)), int(state.get("warmup", 0))
        for name in [*state["tasks"], *(state.get("names") or [])]:
            if name not in self.regression:
                raise ValueError(
                    f"TargetNormalizer.load_state_dict: {name!r} is not a regression task here "
                    f"({', '.join(self.regression) or 'none'})."
                )
        if state.get("names") is not None:  # the tasks chosen (all of them before ``auto``)
            self.names, self.choosing = list(state["names"]), False
        self.spreadless = set(state.get("spreadless", ()))
        saved = state["tasks"]
        if saved:
            names = sorted(saved, key=lambda n: self.names.index(n) if n in self.names else 1e9)
            dims = [int(saved[n]["mean"].numel()) for n in names]
            flat = self._flat
            if flat is None or flat.names != names or flat.dims != dims:
                mean = saved[names[0]]["mean"]
                self._flat = _Flat.build(names, dims, mean.device, mean.dtype)
                self._groups = None
            for name in names:
                for key, value in self._stats[name].tensors().items():
                    value.copy_(saved[name][key].to(value.device, value.dtype))
                self._observed.add(name)
        self.notes.update(state.get("notes", {}))
        for name, (path, first, width) in state.get("heads", {}).items():
            self._paths[name] = (str(path), int(first), int(width))
        self._saved_biases = dict(state.get("biases", {}))
        self._sync()
        self._resolve()

    def check_resumed_heads(self) -> None:
        """Once, at the first forward after :meth:`load_state_dict` (the model's and this state
        both loaded, in either order): raise if a located head holds its bias in user units
        (``σb + μ`` of the bias saved with the state), i.e. the model was saved after
        :meth:`detach` (``composer.close()``) or as a plain state, while the run resumes with
        its heads normalised; its outputs would be off by ``σ`` and ``μ``."""
        if not self._saved_biases:
            return
        saved, self._saved_biases = self._saved_biases, {}
        for head in {id(h): h for h in self.heads.values() if not h.detached}.values():
            path, bias = self._path(head.module), head.module.bias
            if path not in saved or bias is None:
                continue
            kept = torch.tensor(saved[path], dtype=torch.float64)
            now = bias.detach().double().cpu()
            folded = kept * head.sigma.double().cpu() + head.mu.double().cpu()
            eps = torch.finfo(bias.dtype).eps  # the bias was rounded to its own dtype
            in_user_units = (
                kept.shape == now.shape
                and not torch.equal(now, kept)
                and torch.allclose(now, folded, rtol=4 * eps, atol=1e-8)
            )
            if in_user_units:
                raise ValueError(
                    f"normalize_targets: the head {path!r} holds its weights in user units (the "
                    "model was saved after composer.close(), or from plain_state_dict()), but "
                    "the run resumes with its heads normalised; load the model as it was saved "
                    "while wrapped (model.state_dict() before close())."
                )

    def plain_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        """``model.state_dict()`` with every located head in user units (``σW``, ``σb + μ``, as
        :meth:`detach` would leave it), in new tensors: a checkpoint that a plain, unwrapped
        model loads. ``model`` itself is not changed."""
        state = model.state_dict()
        for head, key in self._located_in(model):
            state[key + "weight"], state[key + "bias"] = _in_user_units(
                head, state[key + "weight"], state[key + "bias"]
            )
        return state

    def head_keys(self, model: nn.Module) -> list[str]:
        """The keys of ``model.state_dict()`` that :meth:`plain_state_dict` rewrites: the located
        heads' ``weight`` and ``bias`` (none once detached)."""
        return [key + name for _, key in self._located_in(model) for name in ("weight", "bias")]

    def _located_in(self, model: nn.Module) -> list[tuple[_Head, str]]:
        """Each located head (not detached) in ``model``, with its ``state_dict`` key prefix."""
        prefixes = {id(m): name for name, m in model.named_modules()}
        heads = {id(h): h for h in self.heads.values() if not h.detached}.values()
        return [
            (h, f"{prefixes[id(h.module)]}." if prefixes[id(h.module)] else "")
            for h in heads
            if id(h.module) in prefixes
        ]

    def detach(self, model: nn.Module | None = None) -> None:
        """Fold ``σ, μ`` into the located heads (``W = σW``, ``b = σb + μ``) and remove every
        hook: the model computes in user units by itself again. The statistics stay (for
        :meth:`stats`); :meth:`normalized` goes on with loss-only normalisation."""
        del model  # the hooks and heads are known; the argument mirrors attach()
        self._remove_temporary()
        self._seen = None
        with torch.no_grad():
            for head in self.heads.values():
                if head.detached:
                    continue
                if head.hook is not None:
                    head.hook.remove()
                head.detached, head.last = True, None
                self._groups, self._frozen = None, None
                weight, bias = head.module.weight, head.module.bias
                assert bias is not None
                folded_weight, folded_bias = _in_user_units(head, weight, bias)
                weight.copy_(folded_weight)
                bias.copy_(folded_bias)
