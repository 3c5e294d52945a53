"""Online learning of the retrieval policy's correction Δφ from measured utilities.

The utilities ``u = dL_Q/dw`` of the candidates (:class:`lossrag.meta.online.OnlineMeta`;
negative: more weight would lower the query loss) are noisy per batch
(``research/algorithms.md`` §5), so an EMA of each candidate's utility is used, divided by the
RMS over the candidates. The meta-loss is the first-order change of the query loss through the
active terms' weights, ``Σ ū_i w_i(a)`` with ``a = prior + Δφ``, plus ``rank_weight`` times a
listwise loss ranking each task's candidates by ``−ū``, plus a pull of Δφ towards 0 (the prior);
the meta-gradient is clipped. With one query objective per task, the scores move along the
min-norm common descent direction of the tasks' objectives instead
(:func:`lossrag.minnorm.common_direction`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lossrag.keys import TermKey, nest, unnest
from lossrag.minnorm import common_direction

if TYPE_CHECKING:
    from lossrag.policy.net import Correction

__all__ = ["CorrectionLearner"]


class CorrectionLearner:
    """Adam steps on a correction Δφ from utilities (see the module docstring).

    Args:
        correction: The network whose parameters are learned (``(x, group) -> Δφ``).
        lr: Adam learning rate.
        rank_weight: Weight of the listwise ranking loss.

    Attributes:
        utility: Term -> EMA of its measured utility.
    """

    def __init__(self, correction: Correction, lr: float, rank_weight: float) -> None:
        self.correction, self.rank_weight = correction, rank_weight
        self.optimizer = torch.optim.Adam(correction.parameters(), lr=lr)
        self.utility: dict[TermKey, float] = {}

    def normalised(self, keys: Sequence[TermKey], utilities: Mapping[TermKey, float]) -> Tensor:
        """Fold ``utilities`` into the EMAs; ``ū`` of ``keys`` over its RMS, float32."""
        for k in keys:
            if k in utilities:
                old = self.utility.get(k, utilities[k])
                self.utility[k] = 0.8 * old + 0.2 * utilities[k]
        u = torch.tensor([self.utility.get(k, 0.0) for k in keys], dtype=torch.float32)
        return u / u.pow(2).mean().sqrt().clamp_min(1e-12)

    def step(
        self,
        scored: tuple[Tensor, Tensor, Tensor],
        u: Tensor,
        active: Tensor,
        weigh: Callable[[Tensor], Tensor],
        per_task: Tensor | None = None,
    ) -> list[float]:
        """One step from ``u`` (:meth:`normalised`) on the candidates ``scored`` (feature
        vectors, prior scores, task index); ``active`` marks the active terms, ``weigh`` maps
        every candidate's score to the active terms' weights (differentiably), ``per_task`` holds
        one row of
        utilities per query objective. Returns the new scores ``prior + Δφ``."""
        x, prior, group = scored
        with torch.enable_grad():
            delta = self.correction(x, group)
            a = prior + delta
            w = weigh(a)
            if per_task is None:
                loss = (u[active] * w).sum() + 0.1 * delta.pow(2).mean()
            else:  # one objective per task: move the scores along their common descent direction
                rows = per_task / per_task.pow(2).mean().sqrt().clamp_min(1e-12)
                grads = torch.stack(
                    [
                        torch.autograd.grad((r[active] * w).sum(), a, retain_graph=True)[0]
                        for r in rows
                    ]
                )
                loss = (a * common_direction(grads).to(a).detach()).sum()
                loss = loss + 0.1 * delta.pow(2).mean()
            for g in group.unique():
                rows = group == g
                target = torch.softmax(-u[rows], 0)
                loss = loss - self.rank_weight * (target * torch.log_softmax(a[rows], 0)).sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.correction.parameters(), 1.0)
        self.optimizer.step()
        with torch.no_grad():
            return (prior + self.correction(x, group)).tolist()

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state (``meta_optimizer``) and the utility EMAs (``utility``,
        ``{task: {loss: value}}``)."""
        return {"meta_optimizer": self.optimizer.state_dict(), "utility": nest(self.utility)}

    def load_state_dict(self, state: Mapping[str, Any], tasks: Sequence[str] = ()) -> None:
        """Restore :meth:`state_dict` (old utilities keyed by ``"task:loss"`` strings are split
        with the task names ``tasks``)."""
        self.optimizer.load_state_dict(state["meta_optimizer"])
        self.utility = {k: float(v) for k, v in unnest(state["utility"], tasks).items()}
