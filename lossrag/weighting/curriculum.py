"""Task curriculum: tasks are switched on one after another, on top of any loss-based method.

The weight of term ``i`` at step ``t`` is ``w_i(t) = inner_i(t) · s_i(t)``: the wrapped method's
weight times a 0/1 switch. A task is off until its switch-on step and stays on afterwards. The
inner method sees every loss at every step (its state, e.g. FAMO's logits or DWA's history, keeps
tracking the switched-off tasks too) and only its output is masked.

Schedules (``order``, ``steps``):

- ``order=[a, b, c]`` with ``steps=s`` (an int): ``a`` on from step 0, ``b`` from ``s``, ``c`` from
  ``2s``. With ``steps=[0, 300, 1000]``: each listed task from its own step. Tasks not in
  ``order`` are on from step 0. ``steps=None``: 1000 steps per stage.
- ``order=None``: the order is measured. For the first ``warmup`` steps every task is on; then
  the tasks are ranked by their *relative loss* ``r_i = mean(L_i over the last ⌈warmup/4⌉ warm-up
  steps) / mean(L_i over the first ⌈warmup/4⌉)``, the fraction of its loss a task kept during the
  warm-up. ``criterion="easiest-first"`` ranks the lowest ``r`` (fastest relative progress) first,
  ``"hardest-first"`` the highest. The curriculum then restarts from the first task alone at step
  ``warmup``: the ``k``-th ranked task is switched on at ``warmup + k·s`` (or ``warmup +
  steps[k]``). Ties keep the task order.

Curricula in the spirit of Bengio et al. (ICML 2009) and of Pentina, Sharmanska & Lampert
(CVPR 2015, tasks learned in sequence from easy to hard); switched-on tasks stay on, as in
curriculum learning's growing training set. The composer calls :meth:`Curriculum.bind_tasks` with
one task name per term after ``setup``. :func:`curriculum_from_name` builds ``"curriculum+NAME"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lossrag._util import unknown_name_error
from lossrag.weighting.base import LossMethod, make_method, register_method

__all__ = ["Curriculum", "curriculum_from_name"]

#: Steps per stage when ``steps`` is None.
DEFAULT_STAGE_STEPS = 1000
#: Class flags the curriculum takes over from its inner method.
_FORWARDED_FLAGS = (
    "randomized",
    "per_task_gradients",
    "positive_losses",
    "scale_free",
    "needs_rerun",
    "needs_query",
    "needs_metrics",
    "needs_epochs",
)
#: Options that belong to the curriculum in :func:`curriculum_from_name`; the rest go to the inner.
_OWN_OPTIONS = ("order", "steps", "criterion", "warmup")


@register_method
class Curriculum(LossMethod):
    """Switch tasks on one after another; weights = the inner method's weights × the 0/1 switch.

    Args:
        inner: The loss-based method whose weights are masked, as an instance or a policy name
            (default ``"ew"``). A gradient-based method is a ValueError.
        order: Task names in switch-on order, or None to measure it during ``warmup``.
        steps: Steps between two switch-ons (int), the switch-on step of each task of ``order``
            (list, non-negative), or None (1000 per stage).
        criterion: ``"easiest-first"`` or ``"hardest-first"``: how a measured order ranks tasks.
        warmup: All-on steps used to measure the order when ``order`` is None (>= 2).
    """

    name = "curriculum"

    def __init__(
        self,
        inner: LossMethod | str = "ew",
        order: Sequence[str] | None = None,
        steps: Sequence[int] | int | None = None,
        criterion: Literal["easiest-first", "hardest-first"] = "easiest-first",
        warmup: int = 100,
    ) -> None:
        self.inner = _inner_method(inner)
        self.order = None if order is None else _check_order(order)
        self.stage_steps, self.switch_steps = _check_steps(steps, self.order)
        if criterion not in ("easiest-first", "hardest-first"):
            raise ValueError(
                f"Curriculum: criterion must be 'easiest-first' or 'hardest-first', "
                f"got {criterion!r}."
            )
        if self.order is None and (isinstance(warmup, bool) or warmup < 2):
            raise ValueError(
                f"Curriculum: warmup must be >= 2 steps to measure the order, got {warmup}."
            )
        self.criterion = criterion
        self.warmup = warmup
        for flag in _FORWARDED_FLAGS:  # instance values shadow the class flags the composer reads
            object.__setattr__(self, flag, getattr(self.inner, flag, False))
        self.names: list[str] | None = None

    @property
    def min_losses(self) -> Sequence[float] | None:
        """The inner method's lower bounds of the losses, if it has any."""
        return getattr(self.inner, "min_losses", None)

    # ------------------------------------------------------------------ composer hooks
    def setup(self, num_terms: int, last_shared: Sequence[nn.Parameter]) -> None:
        super().setup(num_terms, last_shared)
        self.inner.setup(num_terms, last_shared)
        self.step = 0
        self.start: Tensor | None = None  # (K,) switch-on step of each term, once known
        self._early: list[Tensor] = []
        self._late: list[Tensor] = []
        if (
            self.order is None
            and self.switch_steps is not None
            and len(self.switch_steps) != num_terms
        ):
            raise ValueError(
                f"Curriculum: steps lists {len(self.switch_steps)} switch-on steps for "
                f"{num_terms} terms."
            )

    def bind_tasks(self, names: list[str]) -> None:
        """Receive the task name of every term, in term order (called once after ``setup``).

        Raises:
            ValueError: ``names`` has the wrong length, or ``order`` names an unknown task.
        """
        if len(names) != self.num_terms:
            raise ValueError(f"Curriculum: got {len(names)} task names for {self.num_terms} terms.")
        self.names = list(names)
        if self.order is not None:
            for task in self.order:
                if task not in self.names:
                    err = unknown_name_error("task", task, sorted(set(self.names)))
                    raise ValueError(f"Curriculum: order: {err}")
            self.start = self._schedule(list(self.order), offset=0)

    def weigh(self, losses: Tensor) -> Tensor:
        """The inner method's weights times this step's 0/1 switches; advances the schedule."""
        if self.order is not None and self.start is None:
            raise RuntimeError(
                "Curriculum with an explicit order needs the task names: call "
                "bind_tasks(names) after setup."
            )
        inner = self.inner.weigh(losses)
        if self.start is None:
            self._measure(losses)
        mask = self.mask()
        self.step += 1
        if self.start is None and self.step == self.warmup:
            self.start = self._schedule(self.measured_order(), offset=self.warmup)
        return inner * mask.to(inner)

    def mask(self) -> Tensor:
        """The ``(K,)`` 0/1 switches of the current step (all on during a warm-up)."""
        if self.start is None:
            return torch.ones(self.num_terms)
        return (self.start <= self.step).float()

    # ------------------------------------------------------------------ the order
    def _measure(self, losses: Tensor) -> None:
        window = math.ceil(self.warmup / 4)
        values = losses.detach().double().cpu().flatten()
        if self.step < window:
            self._early.append(values)
        if self.step >= self.warmup - window:
            self._late.append(values)

    def relative_losses(self) -> Tensor:
        """``r_i`` = mean late warm-up loss / mean early warm-up loss (NaN-safe: a non-finite or
        zero early mean gives ``r_i = 1``)."""
        early = torch.stack(self._early).mean(0)
        late = torch.stack(self._late).mean(0)
        ratio = late / early
        ok = torch.isfinite(ratio) & (early > 0)
        return torch.where(ok, ratio, torch.ones_like(ratio))

    def measured_order(self) -> list[int]:
        """Term indices ranked by ``criterion`` on :meth:`relative_losses` (stable)."""
        r = self.relative_losses()
        key = r if self.criterion == "easiest-first" else -r
        return [int(i) for i in torch.argsort(key, stable=True)]

    def _schedule(self, order: Sequence[str | int], offset: int) -> Tensor:
        """Switch-on step of every term from an order of task names or term indices (terms
        not in the order: step 0)."""
        start = torch.zeros(self.num_terms, dtype=torch.long)
        for rank, item in enumerate(order):
            at = offset + (
                rank * self.stage_steps if self.switch_steps is None else self.switch_steps[rank]
            )
            if isinstance(item, str):
                assert self.names is not None
                for i, n in enumerate(self.names):
                    if n == item:
                        start[i] = at
            else:
                start[item] = at
        return start

    # ------------------------------------------------------------------ forwarding
    def observe_rerun(self, losses_after: Tensor) -> None:
        self.inner.observe_rerun(losses_after)

    def observe_metrics(self, performance: Tensor) -> None:
        """Forwarded to the inner method when it takes metrics (``needs_metrics``)."""
        hook = getattr(self.inner, "observe_metrics", None)
        if hook is not None:
            hook(performance)

    def epoch_end(self) -> None:
        self.inner.epoch_end()

    def meta_step(self, ctx: Any) -> str | None:
        return self.inner.meta_step(ctx)

    def state_dict(self) -> dict[str, Any]:
        return {
            "inner": self.inner.state_dict(),
            "step": self.step,
            "start": None if self.start is None else self.start.clone(),
            "early": [t.clone() for t in self._early],
            "late": [t.clone() for t in self._late],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.step = int(state["step"])
        self.start = None if state["start"] is None else state["start"].clone()
        self._early = [t.clone() for t in state["early"]]
        self._late = [t.clone() for t in state["late"]]


def _inner_method(inner: LossMethod | str) -> LossMethod:
    method = make_method(inner) if isinstance(inner, str) else inner
    if isinstance(method, Curriculum):
        raise ValueError("Curriculum: inner must not itself be a curriculum.")
    if not isinstance(method, LossMethod):
        what = inner if isinstance(inner, str) else type(inner).__name__
        raise ValueError(
            f"Curriculum: inner must be a loss-based method (it masks per-task weights); "
            f"{what!r} is {getattr(method, 'kind', 'not a weighting method')}-based."
        )
    return method


def _check_order(order: Sequence[str]) -> list[str]:
    if isinstance(order, str) or not all(isinstance(n, str) for n in order):
        raise ValueError(f"Curriculum: order must be a list of task names, got {order!r}.")
    seen: set[str] = set()
    for n in order:
        if n in seen:
            raise ValueError(f"Curriculum: order names task {n!r} twice.")
        seen.add(n)
    if not order:
        raise ValueError("Curriculum: order is empty; pass None to measure it.")
    return list(order)


def _check_steps(
    steps: Sequence[int] | int | None, order: list[str] | None
) -> tuple[int, list[int] | None]:
    """(steps per stage, explicit switch-on steps or None)."""
    if steps is None:
        return DEFAULT_STAGE_STEPS, None
    if isinstance(steps, bool):
        raise ValueError(f"Curriculum: steps must be an int or a list of ints, got {steps!r}.")
    if isinstance(steps, int):
        if steps < 0:
            raise ValueError(f"Curriculum: steps must be >= 0, got {steps}.")
        return steps, None
    values = list(steps)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in values):
        raise ValueError(f"Curriculum: steps must be an int or a list of ints, got {steps!r}.")
    negative = [s for s in values if s < 0]
    if negative:
        raise ValueError(f"Curriculum: steps must be >= 0, got {negative} in {values}.")
    if order is not None and len(values) != len(order):
        raise ValueError(
            f"Curriculum: steps lists {len(values)} switch-on steps for {len(order)} tasks "
            "in order."
        )
    return DEFAULT_STAGE_STEPS, values


def curriculum_from_name(name: str, **options: Any) -> Curriculum:
    """Build ``"curriculum+NAME"``: a :class:`Curriculum` over the loss-based method ``NAME``.

    ``order``, ``steps``, ``criterion`` and ``warmup`` in ``options`` go to the curriculum, every
    other option to the inner method (``curriculum_from_name("curriculum+famo", lr=0.01,
    order=["a", "b"])``). ``"curriculum"`` alone wraps EW.

    Raises:
        ValueError: ``name`` does not start with ``"curriculum"``, names an unknown method, or a
            gradient-based one.
    """
    head, plus, inner_name = name.partition("+")
    if head != "curriculum" or (plus and not inner_name):
        raise ValueError(
            f"curriculum_from_name: expected 'curriculum' or 'curriculum+NAME', got {name!r}."
        )
    own = {k: options.pop(k) for k in _OWN_OPTIONS if k in options}
    inner = make_method(inner_name or "ew", **options)
    if not isinstance(inner, LossMethod):
        raise ValueError(
            f"curriculum_from_name: inner must be a loss-based method; {inner_name!r} is "
            f"{inner.kind}-based."
        )
    return Curriculum(inner, **own)
