"""One-step look-ahead hypergradients of a query loss with respect to the weights of loss terms.

With ``θ'(w) = θ − α P Σ_i w_i ∇L_i(θ)`` (SGD, or Adam with its preconditioner ``P`` frozen), θ' is
linear in ``w`` and ``∇L_i`` does not depend on ``w``, so without any Hessian

    dL_Q(θ'(w)) / dw_i = −α ⟨∇L_i(θ), P ∇L_Q(θ')⟩            (research/algorithms.md §2.1)

The inner products are directional derivatives of the term losses along ``d = P v``, ``v =
∇L_Q(θ')``: one forward-mode pass or one (two, central) perturbed forward gives them for *every*
term at once, switched-off candidates included. This module provides the exact way (double
backward through the look-ahead), the per-term way (one backward per term) and the cheap ways
(``jvp``, ``central``, ``forward`` finite differences; and :func:`delayed_utilities`, the online
way that takes ``v`` at the real next iterate).

Everything runs on a functional copy of the model (``torch.func.functional_call``): the live
model's parameters and buffers (BatchNorm's running statistics) are never written, and perturbed
forwards run in float32 or wider.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

__all__ = ["WAYS", "Functional", "delayed_utilities", "directional", "hypergradients"]

Way = Literal["exact", "per_term", "jvp", "central", "forward"]
#: Every way :func:`hypergradients` computes the same quantity.
WAYS: tuple[Way, ...] = ("exact", "per_term", "jvp", "central", "forward")
Params = dict[str, Tensor]


class Functional:
    """A model called with parameters given as a dict, its buffers cloned at every call.

    Args:
        model: The live model; never modified.
        loss: ``loss(model_call, batch) -> Tensor``: the term losses ``(K,)`` or a scalar, where
            ``model_call(x)`` runs the model's forward with the parameters being evaluated.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: Callable[[Callable[..., object], object], Tensor],
    ) -> None:
        self.model = model
        self.loss = loss
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]

    def params(self) -> Params:
        """Detached copies of the trainable parameters (the point θ to evaluate at)."""
        named = dict(self.model.named_parameters())
        return {n: named[n].detach().clone() for n in self.names}

    def __call__(self, params: Mapping[str, Tensor], batch: object) -> Tensor:
        """The loss at ``params`` on ``batch``; running statistics go to throw-away clones."""
        state: dict[str, Tensor] = {n: b.clone() for n, b in self.model.named_buffers()}
        state.update(params)

        def call(*args: object, **kwargs: object) -> object:
            return functional_call(self.model, state, args, kwargs, strict=False)

        return self.loss(call, batch)


def _grads(
    value: Tensor, params: Params, *, create_graph: bool = False, keep: bool = False
) -> Params:
    grads = torch.autograd.grad(
        value,
        list(params.values()),
        create_graph=create_graph,
        retain_graph=keep or create_graph,
        allow_unused=True,
    )
    return {
        n: torch.zeros_like(p) if g is None else g
        for (n, p), g in zip(params.items(), grads, strict=True)
    }


def _dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    return sum((a[n] * b[n]).sum() for n in a)  # type: ignore[return-value]


def _precondition(v: Params, precondition: Mapping[str, Tensor] | None) -> Params:
    return v if precondition is None else {n: t * precondition[n] for n, t in v.items()}


def directional(
    terms: Functional,
    params: Params,
    batch: object,
    direction: Mapping[str, Tensor],
    way: Literal["jvp", "central", "forward"] = "central",
    eps: float = 0.01,
) -> Tensor:
    """``d/dε L_i(θ + ε·direction)`` at ε = 0 for every term ``i`` of ``terms`` at once.

    ``jvp`` is exact (forward mode, one pass); ``central`` uses ``L(θ ± ε̂d)`` and ``forward``
    ``L(θ + ε̂d) − L(θ)``, with ``ε̂ = eps / ‖d‖`` (Auto-Lambda's and DARTS' step), in at least
    float32.
    """
    if way == "jvp":
        primals = {n: p.detach() for n, p in params.items()}
        tangents = {n: direction[n].to(p) for n, p in primals.items()}
        out = jvp(lambda p: terms(p, batch), (primals,), (tangents,))[1]
        return out.detach()
    norm = sum(float((d.double() ** 2).sum()) for d in direction.values()) ** 0.5
    if norm == 0.0:
        return torch.zeros_like(terms(params, batch)).detach()
    step = eps / norm

    def at(sign: float) -> Tensor:
        moved = {
            n: (p.detach().to(_wide(p)) + sign * step * direction[n].to(_wide(p)))
            for n, p in params.items()
        }
        with torch.no_grad():
            return terms(moved, batch).to(torch.float64)

    if way == "central":
        return ((at(1.0) - at(-1.0)) / (2 * step)).detach()
    if way == "forward":
        return ((at(1.0) - at(0.0)) / step).detach()
    raise ValueError(f"directional: unknown way {way!r}; ways: jvp, central, forward.")


def _wide(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def hypergradients(
    terms: Functional,
    query: Functional,
    batch: object,
    query_batch: object,
    weights: Tensor,
    lr: float,
    way: Way = "central",
    precondition: Mapping[str, Tensor] | None = None,
    eps: float = 0.01,
) -> Tensor:
    """``dL_Q(θ')/dw_i`` for every term, θ' the one-step look-ahead from the live parameters.

    Args:
        terms: The term losses ``(K,)`` on the training ``batch``.
        query: The query loss (a scalar) on ``query_batch``.
        weights: ``(K,)`` the terms' current weights.
        lr: The look-ahead step α.
        way: ``exact`` (double backward through θ'), ``per_term`` (K backward passes and inner
            products), ``jvp``, ``central`` or ``forward`` (:func:`directional` along ``P v``).
        precondition: Per-parameter diagonal ``P`` (e.g. Adam's ``1/(√v̂ + ε)``), frozen; SGD if
            ``None``.
    """
    if way not in WAYS:
        raise ValueError(f"hypergradients: unknown way {way!r}; ways: {', '.join(WAYS)}.")
    theta = {n: p.requires_grad_(True) for n, p in terms.params().items()}
    if way == "exact":
        w = weights.detach().clone().requires_grad_(True)
        g = _grads((w * terms(theta, batch)).sum(), theta, create_graph=True)
        step = _precondition(g, precondition)
        ahead = {n: theta[n] - lr * step[n] for n in theta}
        (out,) = torch.autograd.grad(query(ahead, query_batch), w)
        return out.detach()
    losses = terms(theta, batch)
    g = _grads((weights.detach() * losses).sum(), theta, keep=way == "per_term")
    step = _precondition(g, precondition)
    ahead = {n: (theta[n] - lr * step[n]).detach().requires_grad_(True) for n in theta}
    v = _grads(query(ahead, query_batch), ahead)
    direction = _precondition(v, precondition)
    if way == "per_term":
        rows = [_dot(_grads(loss, theta, keep=True), direction) for loss in losses]
        return -lr * torch.stack(rows).detach()
    return -lr * directional(terms, theta, batch, direction, way, eps).to(weights.dtype)


def delayed_utilities(
    terms: Functional,
    previous: Params,
    batch: object,
    query_grad: Mapping[str, Tensor],
    lr: float,
    way: Literal["jvp", "central", "forward"] = "central",
    precondition: Mapping[str, Tensor] | None = None,
    eps: float = 0.01,
) -> Tensor:
    """The online (delayed) way: the real step θ_t → θ_{t+1} is the look-ahead. With the query
    gradient ``v`` taken at θ_{t+1} and the previous parameters ``previous`` = θ_t kept, each
    term's hypergradient is ``−α ⟨∇L_i(θ_t), P v⟩``: one directional derivative at θ_t, no
    virtual step, one step stale."""
    direction = _precondition(dict(query_grad), precondition)
    return -lr * directional(terms, dict(previous), batch, direction, way, eps)
