"""Loss-based baselines taken from ``torchjd.scalarization``.

Each wraps one torchjd scalarizer ``S``. The weight of term ``i`` is the effective weight
``∂S/∂L_i`` at this step's losses, and the model's gradient is ``Σ_i (∂S/∂L_i) ∇L_i``, which is
exactly the gradient of ``S(L)`` by the chain rule. Learnable scalarizer parameters (UW's
log-variances, IMTL-L's scales) get their gradient from the same call and are stepped by the
method's own Adam; FAMO steps its own logits after the re-evaluated losses arrive. Their state is
a few numbers per task and stays on the CPU: the losses come over (one small copy; the composer
reads them as floats anyway) and the weights go back to the losses' device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchjd import scalarization as sc

from lossrag.weighting.base import LossMethod, register_method
from lossrag.weighting.ew import EW  # re-exported: EW lives apart, it needs no torchjd

__all__ = ["DWA", "EW", "FAMO", "IMTLL", "RLW", "STCH", "UW", "GeometricMean"]

#: Added inside the authors' logarithms in the nadir form of STCH.
_EPS = 1e-20


class _Scalarized(LossMethod):
    """A torchjd scalarizer plus, if it has parameters, the Adam that learns them."""

    lr: float = 1e-3

    def _build(self, num_terms: int) -> sc.Scalarizer:
        raise NotImplementedError

    def setup(self, num_terms: int, last_shared: Sequence[nn.Parameter]) -> None:
        super().setup(num_terms, last_shared)
        self.scalarizer = self._build(num_terms)
        params = list(self.scalarizer.parameters())
        self.optimizer = torch.optim.Adam(params, lr=self.lr) if params else None

    def weigh(self, losses: Tensor) -> Tensor:
        values = losses.detach().cpu().clone().requires_grad_(True)
        params = list(self.scalarizer.parameters())
        with torch.enable_grad():
            total = self.scalarizer(values)
        grads = torch.autograd.grad(total, [values, *params])
        if self.optimizer is not None:
            for p, g in zip(params, grads[1:], strict=True):
                p.grad = g
            self.optimizer.step()
            for p in params:
                p.grad = None
        return grads[0].to(losses)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"scalarizer": self.scalarizer.state_dict()}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scalarizer.load_state_dict(state["scalarizer"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])


@register_method
class UW(_Scalarized):
    """Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018): ``Σ ½e^{-s_i}L_i + ½s_i``.

    Args:
        lr: Adam learning rate of the log-variances ``s`` (the paper learns them with the model's
            optimizer; 1e-3 is the benchmark's model learning rate).
    """

    name = "uw"

    def __init__(self, lr: float = 1e-3) -> None:
        self.lr = lr

    def _build(self, num_terms: int) -> sc.Scalarizer:
        return sc.UW(num_terms)


@register_method
class IMTLL(_Scalarized):
    """IMTL-L, loss-balance half of Impartial MTL (Liu et al., ICLR 2021): ``Σ e^{s_i}L_i − s_i``.

    Args:
        lr: Adam learning rate of the scales ``s``.
    """

    name = "imtll"

    def __init__(self, lr: float = 1e-3) -> None:
        self.lr = lr

    def _build(self, num_terms: int) -> sc.Scalarizer:
        return sc.IMTLL(num_terms)


@register_method
class RLW(_Scalarized):
    """Random loss weighting (Lin et al., TMLR 2022): weights ``softmax(ε)``, ``ε ~ N(0, I)``."""

    name = "rlw"
    randomized = True
    reads_losses = False

    def _build(self, num_terms: int) -> sc.Scalarizer:
        return sc.Random()


@register_method
class GeometricMean(_Scalarized):
    """Geometric loss strategy (Chennupati et al., CVPRW 2019): ``(Π L_i)^{1/K}``."""

    name = "geometricmean"
    positive_losses = True
    scale_free = True

    def _build(self, num_terms: int) -> sc.Scalarizer:
        return sc.GeometricMean()


@register_method
class STCH(_Scalarized):
    """Smooth Tchebycheff scalarisation (Lin et al., ICML 2024), in one of two forms.

    - ``nadir=False`` (the default, torchjd's form): ``μ log Σ exp(L_i/(Kμ))`` on the raw
      losses. With losses of very different scales every task but the largest gets a weight of
      about 0 (``benchmarks/collapse.md``).
    - ``nadir=True``, the authors' multi-task form (their LibMTL weighting, repository
      ``Xi-L/STCH``): ``Σ log L_i`` (weights ``1/L_i``) for ``warmup_epochs`` epochs and one
      more, over which the nadir ``n`` is averaged; afterwards ``μK log Σ exp(log(L_i/n_i)/μ)``,
      i.e. weights ``K softmax_i(log(L/n)/μ)/L_i``. Every loss must be non-negative (one of
      exactly 0 is taken as the authors' code takes it, ``log(0 + 1e-20)``). An epoch ends
      at ``Composer.epoch_end()`` or, when ``period`` is given, every ``period`` steps (the
      calls are then ignored); without either the warm-up never ends.

    Args:
        mu: Smoothing parameter (> 0); the paper studies {0.01, 0.1, 0.5, 1} and finds no
            single best, its code's default is 1.
        nadir: The authors' multi-task form (above) instead of the raw one.
        warmup_epochs: Epochs trained on ``Σ log L`` before the one the nadir is measured over
            (nadir form only; the authors' default, 4, when not given).
        period: Optimizer steps per epoch, for loops that do not call ``Composer.epoch_end()``
            (nadir form only).
    """

    name = "stch"

    def __init__(
        self,
        mu: float = 1.0,
        nadir: bool = False,
        warmup_epochs: int | None = None,
        period: int | None = None,
    ) -> None:
        if not mu > 0:
            raise ValueError(f"STCH: mu must be positive, got {mu}.")
        if not isinstance(nadir, bool):
            raise TypeError(f"STCH: nadir must be True or False, got {nadir!r}.")
        for option, value in (("warmup_epochs", warmup_epochs), ("period", period)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"STCH: {option} must be a whole number, got {value!r}.")
        if not nadir and (warmup_epochs is not None or period is not None):
            raise ValueError(
                "STCH: warmup_epochs and period belong to the nadir form (nadir=True)."
            )
        warmup_epochs = 4 if warmup_epochs is None else warmup_epochs
        if warmup_epochs < 0:
            raise ValueError(
                f"STCH: warmup_epochs must be a non-negative number of epochs, got {warmup_epochs}."
            )
        if period is not None and period < 1:
            raise ValueError(f"STCH: period must be a positive number of steps, got {period}.")
        self.mu, self.nadir, self.warmup_epochs, self.period = mu, nadir, warmup_epochs, period
        if nadir:  # the instance flags shadow the class's: the composer checks L >= 0
            object.__setattr__(self, "positive_losses", True)
            object.__setattr__(self, "scale_free", True)
        self.needs_epochs = nadir and period is None
        self._epochs, self._calls, self._count = 0, 0, 0
        self._sum: Tensor | None = None
        self._nadir: Tensor | None = None

    @property
    def min_losses(self) -> list[float] | None:
        """The nadir form's lower bound of each loss: ``-ε`` (a loss of exactly 0, a task fit
        to float precision, is taken as the authors' code takes it, ``log(0 + ε)``)."""
        return [-_EPS] * self.num_terms if self.nadir else None

    def _build(self, num_terms: int) -> sc.Scalarizer:
        return sc.STCH(mu=self.mu)

    def weigh(self, losses: Tensor) -> Tensor:
        if not self.nadir:
            return super().weigh(losses)
        values = losses.detach().cpu().clone().requires_grad_(True)
        with torch.enable_grad():
            if self._nadir is None:  # warm-up, and the epoch the nadir is measured over
                total = torch.log(values + _EPS).sum()
                if self._epochs >= self.warmup_epochs:
                    batch = values.detach()
                    self._sum = batch if self._sum is None else self._sum + batch
                    self._count += 1
            else:
                logs = torch.log(values / self._nadir + _EPS) / self.mu
                total = self.mu * len(values) * torch.logsumexp(logs, dim=0)
        (weights,) = torch.autograd.grad(total, values)
        self._calls += 1
        if self.period is not None and self._calls % self.period == 0:
            self._end_epoch()
        return weights.to(losses)

    def epoch_end(self) -> None:
        if self.nadir and self.period is None:
            self._end_epoch()

    def _end_epoch(self) -> None:
        if self._nadir is None and self._sum is not None:
            self._nadir = self._sum / self._count
        self._epochs += 1

    def state_dict(self) -> dict[str, Any]:
        if not self.nadir:
            return super().state_dict()
        return {
            "warmup_epochs": self.warmup_epochs,
            "period": self.period,
            "epochs": self._epochs,
            "calls": self._calls,
            "count": self._count,
            "sum": self._sum,
            "nadir": self._nadir,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved_nadir = "epochs" in state
        if saved_nadir != self.nadir:
            saved, this = ("nadir", "raw") if saved_nadir else ("raw", "nadir")
            raise ValueError(
                f"STCH: this state was saved by the {saved} form (nadir={saved_nadir}); this "
                f"STCH is the {this} form."
            )
        if not self.nadir:
            super().load_state_dict(state)
            return
        for option in ("warmup_epochs", "period"):  # states before these were saved: unchecked
            if option in state and state[option] != getattr(self, option):
                raise ValueError(
                    f"STCH: this state was saved with {option}={state[option]}; this STCH has "
                    f"{option}={getattr(self, option)}, whose nadir would be measured elsewhere."
                )
        self._epochs, self._calls, self._count = state["epochs"], state["calls"], state["count"]
        # on the CPU, where the weights are computed (a checkpoint may be mapped elsewhere)
        self._sum, self._nadir = _on_cpu(state["sum"]), _on_cpu(state["nadir"])


def _on_cpu(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.cpu()


@register_method
class DWA(_Scalarized):
    """Dynamic weight average (Liu, Johns & Davison, CVPR 2019), temperature 2.

    The weights use the ratio of the last two *epoch* average losses. The history rolls at each
    ``Composer.epoch_end()`` or, when ``period`` is given, every ``period`` steps (the calls are
    then ignored); until two epochs have passed the weights are uniform (1 each).
    """

    name = "dwa"

    def __init__(self, temperature: float = 2.0, period: int | None = None) -> None:
        if period is not None and period < 1:
            raise ValueError(f"DWA: period must be a positive number of steps, got {period}.")
        self.temperature = temperature
        self.period = period
        self.needs_epochs = period is None
        self._calls = 0

    def _build(self, num_terms: int) -> sc.Scalarizer:
        return sc.DWA(temperature=self.temperature)

    def weigh(self, losses: Tensor) -> Tensor:
        weights = super().weigh(losses)
        self._calls += 1
        if self.period is not None and self._calls % self.period == 0:
            self._roll()
        return weights

    def epoch_end(self) -> None:
        if self.period is None:
            self._roll()

    def _roll(self) -> None:
        scalarizer: Any = self.scalarizer
        scalarizer.step()

    def state_dict(self) -> dict[str, Any]:
        s: Any = self.scalarizer
        return {
            "calls": self._calls,
            "loss_sum": s._loss_sum,
            "n_batches": s._n_batches,
            "previous": list(s._previous_averages),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        s: Any = self.scalarizer
        self._calls = int(state["calls"])
        s._loss_sum, s._n_batches = _on_cpu(state["loss_sum"]), int(state["n_batches"])
        s._previous_averages = [t.cpu() for t in state["previous"]]


@register_method
class FAMO(_Scalarized):
    """Fast adaptive multitask optimisation (Liu et al., NeurIPS 2023).

    The model step uses ``c·Σ z_i log L_i``; after the optimizer step the composer re-evaluates the
    previous batch without gradients (one extra forward, buffers restored) and FAMO takes an Adam
    step on its logits towards the tasks whose log-loss fell least.

    Args:
        lr: Adam learning rate of the logits (paper: 0.025).
        weight_decay: Logit regularisation γ (paper's Algorithm 2: 1e-3).
        min_losses: The lower bound ``b_i`` of each loss (paper: 0 for non-negative losses);
            FAMO works on ``log(L_i − b_i)``, so every loss must stay above its bound.
    """

    name = "famo"
    needs_rerun = True
    positive_losses = True
    scale_free = True

    def __init__(
        self,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        min_losses: Sequence[float] | None = None,
    ) -> None:
        self.lr = lr
        self.weight_decay = weight_decay
        self.min_losses = None if min_losses is None else [float(b) for b in min_losses]

    def _build(self, num_terms: int) -> sc.Scalarizer:
        if self.min_losses is not None and len(self.min_losses) != num_terms:
            raise ValueError(
                f"FAMO: min_losses has {len(self.min_losses)} values for {num_terms} terms."
            )
        bounds = None if self.min_losses is None else torch.tensor(self.min_losses)
        return sc.FAMO(num_terms, bounds, lr=self.lr, weight_decay=self.weight_decay)

    def setup(self, num_terms: int, last_shared: Sequence[nn.Parameter]) -> None:
        self.num_terms = num_terms
        self.scalarizer = self._build(num_terms)
        self.optimizer = None  # FAMO steps its logits itself, in `update`
        self._logits = next(iter(self.scalarizer.parameters()))

    def weigh(self, losses: Tensor) -> Tensor:
        values = losses.detach().cpu().clone().requires_grad_(True)
        with torch.enable_grad():
            total = self.scalarizer(values)
        (weights,) = torch.autograd.grad(total, [values])
        return weights.to(losses)

    def observe_rerun(self, losses_after: Tensor) -> None:
        famo: Any = self.scalarizer
        famo.update(losses_after.detach().cpu())

    def state_dict(self) -> dict[str, Any]:
        s: Any = self.scalarizer
        opt = s._optimizer
        return {
            "logits": self._logits.detach().clone(),
            "prev": s._prev_losses,
            "optimizer": None if opt is None else opt.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        s: Any = self.scalarizer
        with torch.no_grad():
            self._logits.copy_(state["logits"])
        s._prev_losses = state["prev"]
        s._optimizer = None
        if state["optimizer"] is not None:
            s._optimizer = torch.optim.Adam(
                [self._logits], lr=self.lr, weight_decay=self.weight_decay
            )
            s._optimizer.load_state_dict(state["optimizer"])
