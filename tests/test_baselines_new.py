"""The newer baselines against their published update rules: DB-MTL, GO4Align, the torchjd 0.18
wrappers (ExcessMTL, SDMGrad, MoDo, CR-MOGM, COSMOS, PBI), performance-based weighting (incl.
DTP), the task curriculum, IMTL-G in float64 and Nash-MTL's weighted heads.

Each rule is checked on hand-computed cases or against an independent re-implementation of the
reference code; the torchjd wrappers against calling torchjd directly, step by step.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchjd import aggregation as agg
from torchjd import scalarization as sc

from lossrag.weighting.aggregators import IMTLG, NashMTL
from lossrag.weighting.base import GradMethod, LossMethod, Method
from lossrag.weighting.curriculum import Curriculum, curriculum_from_name
from lossrag.weighting.dbmtl import DBMTL, dbmtl_direction
from lossrag.weighting.go4align import GO4Align, go4align_indicators, group_weights, kmeans_1d
from lossrag.weighting.perf import (
    PerformanceWeighting,
    dtp_weights,
    inverse_weights,
    performance_from_metric,
)
from lossrag.weighting.torchjd_extra import COSMOS, CRMOGM, PBI, ExcessMTL, MoDo, SDMGrad


def _setup(method: Method, k: int) -> Method:
    method.setup(k, [])
    return method


def _jacobians(seed: int, steps: int, k: int = 3, n: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(k, n, generator=g) * torch.rand(k, 1, generator=g).add(0.2)
        for _ in range(steps)
    ]


# ======================================================================= IMTL-G in float64
def _imtlg_libmtl(jac: np.ndarray) -> np.ndarray:
    """LibMTL's ``IMTL.py`` closed form (Liu et al. 2021, Eq. 10) in float64:
    ``α₂..K = g₁Uᵀ (DUᵀ)⁻¹`` with ``D = g₁ − g_{2..K}``, ``U = u₁ − u_{2..K}``, ``α₁ = 1 − Σα``."""
    g = jac.astype(np.float64)
    u = g / np.linalg.norm(g, axis=1, keepdims=True)
    d, ud = g[0] - g[1:], u[0] - u[1:]
    rest = g[0] @ ud.T @ np.linalg.inv(d @ ud.T)
    return np.concatenate([[1 - rest.sum()], rest])


def _nearly_parallel(seed: int, spread: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 200, generator=g)
    rows = base + spread * torch.randn(3, 200, generator=g)
    return (rows * torch.tensor([[1.0], [3.0], [0.5]])).float()


def test_imtlg_weights_are_computed_in_float64():
    """Gramian condition number ~2e5–3e6: torchjd's float32 pseudo-inverse is off by 6e-4 to 0.4
    against LibMTL's rule in float64; ours matches it to float32 rounding of the result (and to
    1e-10 when the Jacobian is float64), and its direction is the float64 ``w @ J``."""
    for seed, spread in [(0, 1e-2), (1, 3e-3)]:
        jac = _nearly_parallel(seed, spread)
        gram = jac.double() @ jac.double().T
        assert np.linalg.cond(gram.numpy()) > 1e5
        reference = _imtlg_libmtl(jac.double().numpy())
        direction, weights = _setup(IMTLG(), 3).aggregate(jac)  # type: ignore[attr-defined]
        assert weights.dtype == torch.float32 and direction.dtype == torch.float32
        np.testing.assert_allclose(weights.double().numpy(), reference, rtol=0, atol=1e-6)
        float32 = agg.IMTLGWeighting()(jac @ jac.T).double().numpy()
        assert np.abs(float32 - reference).max() > 1e-4  # what the float64 path fixes
        torch.testing.assert_close(
            direction, (torch.from_numpy(reference) @ jac.double()).float(), rtol=1e-5, atol=1e-6
        )
        _, w64 = _setup(IMTLG(), 3).aggregate(jac.double())  # type: ignore[attr-defined]
        np.testing.assert_allclose(w64.numpy(), reference, rtol=0, atol=1e-10)


def test_imtlg_still_equalises_projections():
    jac = torch.tensor([[1.0, 0.0, 0.5], [-0.5, 1.0, 0.0], [0.2, -0.3, 1.0]])
    d, w = _setup(IMTLG(), 3).aggregate(jac)  # type: ignore[attr-defined]
    cos = (jac @ d) / jac.norm(dim=1)
    torch.testing.assert_close(cos, cos.mean().expand(3), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w, torch.tensor([0.30172, 0.45478, 0.24351]), rtol=1e-4, atol=1e-5)


# ======================================================================= Nash-MTL heads
def test_nashmtl_heads_get_the_unclipped_alpha():
    """Authors' code: ``Σ α_i L_i`` backward, then the norm clip on the shared parameters only.
    So head weights = α (unclipped) while the returned weights are α·max_norm/‖Jᵀα‖."""
    assert NashMTL.heads_weighted is True and GradMethod.heads_weighted is False
    assert IMTLG.heads_weighted is False
    jac = torch.tensor([[1.0, 0.0, 0.5], [-0.5, 1.0, 0.0], [0.2, -0.3, 1.0]])
    method = _setup(NashMTL(max_norm=1.0), 3)
    assert isinstance(method, NashMTL)
    torch.testing.assert_close(method.head_weights(), torch.ones(3, dtype=torch.float64))
    _, weights = method.aggregate(jac)
    alpha = method.head_weights()
    raw = alpha.float() @ jac
    assert float(raw.norm()) > 1.0  # clipped
    torch.testing.assert_close(weights, alpha.float() / raw.norm(), rtol=1e-5, atol=1e-6)
    gram = (jac @ jac.T).double()
    torch.testing.assert_close(alpha * (gram @ alpha), torch.ones(3, dtype=torch.float64))


# ======================================================================= DB-MTL
def _dbmtl_reference(
    jacobians: list[np.ndarray], losses: list[np.ndarray], beta: float, sigma: float, eps: float
) -> list[np.ndarray]:
    """LibMTL ``DB_MTL.py`` rewritten in numpy: buffer starts at 0; per step
    ``buf = g + β/t^σ (buf − g)`` with ``g = ∇log(L + ε)``; ``α = max‖buf‖/(‖buf_i‖ + 1e-8)``;
    direction ``Σ α_i buf_i``."""
    buf = np.zeros_like(jacobians[0], dtype=np.float64)
    out = []
    for t, (jac, loss) in enumerate(zip(jacobians, losses, strict=True), start=1):
        g = jac.astype(np.float64) / (loss[:, None] + eps)
        buf = g + beta / t**sigma * (buf - g)
        norms = np.linalg.norm(buf, axis=1)
        alpha = norms.max() / (norms + 1e-8)
        out.append(alpha @ buf)
    return out


def test_dbmtl_first_step_by_hand():
    """J = [[3, 4], [0, 1]], L = (1, 0.5), ε = 0, β = 0.9: log-Jacobian [[3, 4], [0, 2]];
    buffer (1−β)·that = [[.3, .4], [0, .2]]; norms (.5, .2); α = (1, 2.5);
    direction (.3, .4) + 2.5·(0, .2) = (.3, .9)."""
    method = _setup(DBMTL(beta=0.9, eps=0.0), 2)
    assert isinstance(method, DBMTL)
    method.observe_losses(torch.tensor([1.0, 0.5]))
    direction, weights = method.aggregate(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
    assert weights is None
    torch.testing.assert_close(direction, torch.tensor([0.3, 0.9]))
    torch.testing.assert_close(method.head_weights(), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize(("beta", "sigma"), [(0.9, 0.0), (0.5, 0.5), (0.0, 0.0)])
def test_dbmtl_matches_libmtl_rule_over_steps(beta, sigma):
    jacobians = _jacobians(3, 6, k=3, n=5)
    g = torch.Generator().manual_seed(4)
    losses = [torch.rand(3, generator=g) * 3 + 0.05 for _ in jacobians]
    expected = _dbmtl_reference(
        [j.numpy() for j in jacobians], [v.numpy() for v in losses], beta, sigma, 1e-8
    )
    method = _setup(DBMTL(beta=beta, beta_sigma=sigma), 3)
    assert isinstance(method, DBMTL)
    for jac, loss, ref in zip(jacobians, losses, expected, strict=True):
        method.observe_losses(loss)
        direction, _ = method.aggregate(jac)
        np.testing.assert_allclose(direction.double().numpy(), ref, rtol=1e-5, atol=1e-6)


def test_dbmtl_rescales_every_task_to_the_largest_norm():
    buf = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.1, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    direction, alpha = dbmtl_direction(buf)
    scaled = (alpha[:, None] * buf).norm(dim=1)
    torch.testing.assert_close(
        scaled, torch.full((3,), 5.0, dtype=torch.float64), rtol=1e-7, atol=0
    )
    torch.testing.assert_close(direction, alpha @ buf)


def test_dbmtl_state_resumes_and_bad_input():
    jacobians = _jacobians(5, 4)
    losses = torch.tensor([0.3, 1.0, 2.0])
    a = _setup(DBMTL(), 3)
    assert isinstance(a, DBMTL)
    for jac in jacobians[:2]:
        a.observe_losses(losses)
        a.aggregate(jac)
    b = _setup(DBMTL(), 3)
    assert isinstance(b, DBMTL)
    b.load_state_dict(a.state_dict())
    for jac in jacobians[2:]:
        a.observe_losses(losses)
        b.observe_losses(losses)
        torch.testing.assert_close(a.aggregate(jac)[0], b.aggregate(jac)[0])
    fresh = _setup(DBMTL(), 3)
    assert isinstance(fresh, DBMTL)
    with pytest.raises(RuntimeError, match="observe_losses"):
        fresh.aggregate(jacobians[0])
    with pytest.raises(ValueError, match="2 losses for 3 terms"):
        fresh.observe_losses(torch.ones(2))
    with pytest.raises(ValueError, match="log"):
        fresh.observe_losses(torch.tensor([1.0, -0.5, 1.0]))
    for bad in [{"beta": 1.0}, {"beta_sigma": -1.0}, {"eps": -1.0}]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            DBMTL(**bad)


# ======================================================================= GO4Align
def test_go4align_indicators_by_hand():
    """η = 0 keeps p = 1/K: L = (1, 2, 4, 8), ΣL = 15, γ = 15/(4 L) = (3.75, 1.875, .9375, .46875).
    Two groups: {3.75} and {1.875, .9375, .46875} (SSE 1.025 against 1.868 for the other
    contiguous split), centres 3.75 and 1.09375."""
    losses = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    gamma, log_p = go4align_indicators(losses, torch.full((4,), math.log(0.25)), 0.0)
    torch.testing.assert_close(gamma, torch.tensor([3.75, 1.875, 0.9375, 0.46875]).double())
    torch.testing.assert_close(log_p.exp(), torch.full((4,), 0.25).double())
    method = _setup(GO4Align(num_groups=2, step_size=0.0), 4)
    torch.testing.assert_close(
        method.weigh(losses.float()), torch.tensor([3.75, 1.09375, 1.09375, 1.09375])
    )
    # one group: every task gets the mean indicator; K groups: every task its own indicator
    torch.testing.assert_close(group_weights(gamma, 1), gamma.mean().expand(4))
    torch.testing.assert_close(group_weights(gamma, 4), gamma)
    torch.testing.assert_close(group_weights(gamma, 9), gamma)


def test_go4align_risk_distribution_accumulates_the_trajectory():
    """p ← p·exp(−ηL)/Z each step, so after steps L¹, L²: p ∝ exp(−η(L¹ + L²)); γ = (ΣL/L)·p."""
    eta = 0.3
    l1 = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    l2 = torch.tensor([0.5, 3.0, 1.0], dtype=torch.float64)
    method = _setup(GO4Align(num_groups=3, step_size=eta), 3)
    method.weigh(l1)
    w = method.weigh(l2)
    p = torch.softmax(-eta * (l1 + l2), dim=0)
    torch.testing.assert_close(w, (l2.sum() / l2) * p)


def _brute_force_sse(values: list[float], m: int) -> float:
    best = math.inf
    for labels in itertools.product(range(m), repeat=len(values)):
        sse = 0.0
        for g in set(labels):
            members = [v for v, lab in zip(values, labels, strict=True) if lab == g]
            mean = sum(members) / len(members)
            sse += sum((v - mean) ** 2 for v in members)
        best = min(best, sse)
    return best


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=6),
    m=st.integers(1, 4),
)
def test_kmeans_1d_reaches_the_global_optimum(values, m):
    x = torch.tensor(values, dtype=torch.float64)
    labels = kmeans_1d(x, m)
    assert labels.shape == (len(values),) and int(labels.max()) < min(m, len(values))
    sse = 0.0
    for g in labels.unique():
        members = x[labels == g]
        sse += float(((members - members.mean()) ** 2).sum())
    assert sse <= _brute_force_sse(values, min(m, len(values))) + 1e-9


def test_go4align_state_skip_and_bad_input():
    a = _setup(GO4Align(step_size=0.1), 3)
    a.weigh(torch.tensor([1.0, 2.0, 3.0]))
    b = _setup(GO4Align(step_size=0.1), 3)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(
        a.weigh(torch.tensor([2.0, 1.0, 3.0])), b.weigh(torch.tensor([2.0, 1.0, 3.0]))
    )
    before = a.state_dict()["log_probs"].clone()
    w = a.weigh(torch.tensor([1.0, 0.0, 3.0]))
    assert torch.isnan(w).all()  # the composer skips the step
    torch.testing.assert_close(a.state_dict()["log_probs"], before)
    with pytest.raises(ValueError, match="num_groups"):
        GO4Align(num_groups=0)
    with pytest.raises(ValueError, match="step_size"):
        GO4Align(step_size=-1.0)


# ======================================================================= torchjd 0.18 wrappers
GRAD_WRAPPERS = {
    # name: (our method, the same rule called directly in torchjd: Jacobian -> weights)
    "excessmtl": (
        lambda: ExcessMTL(),
        lambda: (lambda w: lambda j: w(j))(agg.ExcessMTLWeighting(robust_step_size=1e-2)),
    ),
    "sdmgrad": (
        lambda: SDMGrad(),
        lambda: (lambda w: lambda j: w(j @ j.T))(agg.SDMGradWeighting(lambda_=0.3)),
    ),
    "modo": (
        lambda: MoDo(),
        lambda: (lambda w: lambda j: w(j @ j.T))(agg.MoDoWeighting(gamma=0.1, rho=0.1)),
    ),
    "crmogm": (
        lambda: CRMOGM(),
        lambda: (lambda a: lambda j: a.weighting(j))(
            agg.GramianWeightedAggregator(agg.CRMOGMWeighting(agg.MGDAWeighting(), alpha=0.9))
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(GRAD_WRAPPERS))
def test_gradient_wrappers_match_torchjd_step_by_step(name):
    ours_factory, theirs_factory = GRAD_WRAPPERS[name]
    ours, theirs = _setup(ours_factory(), 3), theirs_factory()
    assert isinstance(ours, GradMethod) and ours.name == name
    for jac in _jacobians(7, 5):
        direction, weights = ours.aggregate(jac)
        expected = theirs(jac)
        torch.testing.assert_close(weights, expected)
        torch.testing.assert_close(direction, expected @ jac)


@pytest.mark.parametrize("name", sorted(GRAD_WRAPPERS))
def test_gradient_wrappers_resume_bit_for_bit(name):
    factory, _ = GRAD_WRAPPERS[name]
    jacobians = _jacobians(8, 5)
    a = _setup(factory(), 3)
    for jac in jacobians[:3]:
        a.aggregate(jac)
    b = _setup(factory(), 3)
    b.load_state_dict(a.state_dict())
    for jac in jacobians[3:]:
        torch.testing.assert_close(a.aggregate(jac)[1], b.aggregate(jac)[1], rtol=0, atol=0)


def test_excessmtl_state_is_the_squared_gradient_sum():
    method = _setup(ExcessMTL(n_warmup_steps=2), 3)
    jacobians = _jacobians(9, 3)
    for jac in jacobians[:2]:
        _, w = method.aggregate(jac)
        torch.testing.assert_close(w, torch.full((3,), 1 / 3))  # warm-up: uniform
    state = method.state_dict()
    torch.testing.assert_close(state["_sq_grad_sum"], jacobians[0] ** 2 + jacobians[1] ** 2)
    assert state["n_steps"] == 2


def _scalarizer_weights(scalarizer: sc.Scalarizer, losses: torch.Tensor) -> torch.Tensor:
    values = losses.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(scalarizer(values), [values])
    return grad


def test_cosmos_and_pbi_match_torchjd():
    losses = torch.tensor([0.5, 2.0, 1.0])
    r = torch.full((3,), 1 / 3)
    torch.testing.assert_close(
        _setup(COSMOS(lambda_=0.5), 3).weigh(losses),  # type: ignore[attr-defined]
        _scalarizer_weights(sc.COSMOS(0.5, r), losses),
    )
    pref, ref = [0.2, 0.5, 0.3], [0.1, 0.0, 0.2]
    torch.testing.assert_close(
        _setup(PBI(theta=5.0, preference=pref, reference=ref), 3).weigh(losses),  # type: ignore[attr-defined]
        _scalarizer_weights(sc.PBI(5.0, torch.tensor(pref), torch.tensor(ref)), losses),
    )
    # λ = 0: COSMOS is the linear scalarisation Σ r_i L_i
    torch.testing.assert_close(_setup(COSMOS(lambda_=0.0), 3).weigh(losses), r)  # type: ignore[attr-defined]


def test_pbi_takes_float64_losses():
    """The toy feeds float64 losses; PBI's dot products do not promote, so w and z* follow."""
    pref, ref = [0.2, 0.5, 0.3], [0.1, 0.0, 0.2]
    losses = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    method = _setup(PBI(theta=5.0, preference=pref, reference=ref), 3)
    got = method.weigh(losses)  # type: ignore[attr-defined]
    w, z = (torch.tensor(v, dtype=torch.float64) for v in (pref, ref))
    expected = _scalarizer_weights(sc.PBI(5.0, w, z), losses)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected)
    assert method.weigh(losses.float()).dtype == torch.float32  # type: ignore[attr-defined]
    drawn = _setup(PBI(resample=True), 3)  # a fresh float32 draw each step
    assert drawn.weigh(losses).dtype == torch.float64  # type: ignore[attr-defined]


def test_pbi_keeps_its_preference_under_half_precision_losses():
    """Half-precision losses are weighed in float32: casting ``w`` to them in place rounded a
    fixed preference for every later step (0.2 -> 0.19995)."""
    pref = [0.2, 0.5, 0.3]
    method = _setup(PBI(theta=5.0, preference=pref), 3)
    losses = torch.tensor([0.5, 2.0, 1.0])
    before = method.weigh(losses)  # type: ignore[attr-defined]
    assert method.weigh(losses.half()).dtype == torch.float16  # type: ignore[attr-defined]
    assert torch.equal(method.scalarizer.weights, torch.tensor(pref))  # type: ignore[attr-defined]
    assert torch.equal(method.weigh(losses), before)  # type: ignore[attr-defined]


def test_cosmos_weights_by_hand():
    """∂/∂L_i [r·L − λ r·L/(‖r‖‖L‖)] = r_i − λ (r_i/(‖r‖‖L‖) − (r·L) L_i/(‖r‖‖L‖³))."""
    losses = torch.tensor([3.0, 4.0], dtype=torch.float64)
    r = torch.tensor([0.5, 0.5], dtype=torch.float64)
    lam = 2.0
    nr, nl, rl = r.norm(), losses.norm(), r @ losses
    expected = r - lam * (r / (nr * nl) - rl * losses / (nr * nl**3))
    got = _setup(COSMOS(lambda_=lam), 2).weigh(losses)  # type: ignore[attr-defined]
    torch.testing.assert_close(got, expected.float().double(), rtol=1e-6, atol=1e-7)


def test_preference_resampling_is_seeded_dirichlet():
    method = _setup(COSMOS(lambda_=0.0, resample=True, concentration=0.5), 3)
    assert method.randomized and not COSMOS().randomized and not COSMOS.randomized
    torch.manual_seed(0)
    w1 = method.weigh(torch.ones(3))  # type: ignore[attr-defined]
    torch.manual_seed(0)
    expected = torch.distributions.Dirichlet(torch.full((3,), 0.5)).sample()
    torch.testing.assert_close(w1, expected)  # λ = 0: weights = r
    assert float(w1.sum()) == pytest.approx(1.0)
    resumed = _setup(COSMOS(lambda_=0.0), 3)
    resumed.load_state_dict(method.state_dict())
    torch.testing.assert_close(resumed.weigh(torch.ones(3)), w1)  # type: ignore[attr-defined]


def test_torchjd_wrappers_bad_input():
    with pytest.raises(ValueError, match="preference has 2 values for 3 terms"):
        _setup(COSMOS(preference=[0.5, 0.5]), 3)
    with pytest.raises(ValueError, match="reference has 1 values"):
        _setup(PBI(reference=[0.0]), 3)
    with pytest.raises(ValueError, match="preference must be non-negative"):
        PBI(preference=[1.0, -1.0])
    with pytest.raises(ValueError, match="lambda_"):
        COSMOS(lambda_=-1.0)
    with pytest.raises(ValueError, match="theta"):
        PBI(theta=-1.0)
    with pytest.raises(ValueError, match="Did you mean 'upgrad'"):
        CRMOGM(inner="upgrd")
    with pytest.raises(ValueError, match="alpha"):
        CRMOGM(alpha=1.5)
    with pytest.raises(ValueError, match="robust_step_size"):
        ExcessMTL(robust_step_size=0.0)
    with pytest.raises(ValueError, match="n_iter"):
        SDMGrad(n_iter=0)
    with pytest.raises(ValueError, match="gamma"):
        MoDo(gamma=0.0)


# ======================================================================= training end to end
def _train(method: Method, steps: int = 300, lr: float = 0.01) -> tuple[float, float]:
    """Two regression tasks on a shared linear layer and two heads; the method's weights or
    direction drive Adam (the composer's contract, written out: observe_losses before
    aggregate, heads weighted by head_weights when heads_weighted). Returns first/last Σ L."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    targets = [x @ torch.randn(4, generator=g), 3.0 * (x @ torch.randn(4, generator=g))]
    shared = torch.nn.Linear(4, 8)
    heads = [torch.nn.Linear(8, 1) for _ in targets]
    torch.manual_seed(0)
    for m in [shared, *heads]:
        for p in m.parameters():
            torch.nn.init.normal_(p, std=0.3)
    shared_params = list(shared.parameters())
    head_params = [p for h in heads for p in h.parameters()]
    method.setup(2, shared_params)
    bind = getattr(method, "bind_tasks", None)
    if bind is not None:
        bind(["a", "b"])
    optimizer = torch.optim.Adam(shared_params + head_params, lr=lr)
    totals = []
    for _ in range(steps):
        z = shared(x)
        losses = torch.stack(
            [((h(z).squeeze(1) - t) ** 2).mean() for h, t in zip(heads, targets, strict=True)]
        )
        totals.append(float(losses.detach().sum()))
        if isinstance(method, LossMethod):
            w = method.weigh(losses)
            grads = torch.autograd.grad((w.detach() * losses).sum(), shared_params + head_params)
        else:
            assert isinstance(method, GradMethod)
            observe = getattr(method, "observe_losses", None)
            if observe is not None:
                observe(losses.detach())
            rows = [
                torch.cat(
                    [q.flatten() for q in torch.autograd.grad(v, shared_params, retain_graph=True)]
                )
                for v in losses
            ]
            direction, _ = method.aggregate(torch.stack(rows))
            hw = method.head_weights() if method.heads_weighted else torch.ones(2)  # type: ignore[attr-defined]
            head_grads = torch.autograd.grad((hw.to(losses) * losses).sum(), head_params)
            sizes = [p.numel() for p in shared_params]
            grads = tuple(
                d.view_as(p) for d, p in zip(direction.split(sizes), shared_params, strict=True)
            )
            grads = grads + tuple(head_grads)
        for p, gr in zip(shared_params + head_params, grads, strict=True):
            p.grad = gr
        optimizer.step()
    return totals[0], totals[-1]


@pytest.mark.parametrize(
    "factory",
    [
        lambda: DBMTL(),
        lambda: GO4Align(),
        lambda: ExcessMTL(),
        lambda: SDMGrad(),
        lambda: MoDo(),
        lambda: CRMOGM(),
        lambda: COSMOS(),
        lambda: PBI(),
        lambda: PerformanceWeighting(),
        lambda: Curriculum("stch", order=["b", "a"], steps=10),
    ],
)
def test_each_new_method_trains_a_small_model(factory):
    first, last = _train(factory())
    assert math.isfinite(last) and last < 0.1 * first


# ======================================================================= performance weighting
def test_inverse_performance_weights_by_hand():
    """m = (0, ½, 1): 1/(1+m) = (1, ⅔, ½), sum 13/6, rescaled to Σ = 3: (18, 12, 9)/13."""
    w = inverse_weights(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(w, torch.tensor([18.0, 12.0, 9.0], dtype=torch.float64) / 13)


def test_dtp_weights_by_hand():
    """κ = (½, 0.9), γ = 1: −(1−κ) log κ = (0.34657, 0.010536), rescaled to Σ = 2."""
    kpi = torch.tensor([0.5, 0.9], dtype=torch.float64)
    raw = torch.tensor([0.5 * math.log(2), -0.1 * math.log(0.9)], dtype=torch.float64)
    torch.testing.assert_close(dtp_weights(kpi, 1.0), 2 * raw / raw.sum())
    # γ = 0: −log κ; a perfect task gets 0; all perfect: ones
    torch.testing.assert_close(
        dtp_weights(torch.tensor([0.5, 1.0]).double(), 0.0), torch.tensor([2.0, 0.0]).double()
    )
    torch.testing.assert_close(dtp_weights(torch.ones(3).double(), 2.0), torch.ones(3).double())
    assert torch.isfinite(dtp_weights(torch.tensor([0.0, 0.5]).double(), 1.0)).all()


def test_perf_method_lifecycle_and_ema():
    method = _setup(PerformanceWeighting(form="dtp", gamma=0.0, momentum=0.5), 2)
    assert PerformanceWeighting.needs_metrics
    assert isinstance(method, PerformanceWeighting)
    torch.testing.assert_close(method.weigh(torch.ones(2)), torch.ones(2))  # no metrics yet
    method.observe_metrics(torch.tensor([0.5, 0.5]))
    method.observe_metrics(torch.tensor([0.1, 0.9]))  # EMA: (0.3, 0.7)
    raw = -torch.log(torch.tensor([0.3, 0.7]))
    torch.testing.assert_close(method.weigh(torch.ones(2)), 2 * raw / raw.sum())
    resumed = _setup(PerformanceWeighting(form="dtp", gamma=0.0, momentum=0.5), 2)
    resumed.load_state_dict(method.state_dict())
    torch.testing.assert_close(resumed.weigh(torch.ones(2)), method.weigh(torch.ones(2)))


@settings(max_examples=30, deadline=None)
@given(
    perf=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6),
    form=st.sampled_from(["inverse", "dtp"]),
)
def test_a_worse_task_never_gets_less_weight(perf, form):
    method = _setup(PerformanceWeighting(form=form), len(perf))
    assert isinstance(method, PerformanceWeighting)
    method.observe_metrics(torch.tensor(perf))
    w = method.weigh(torch.ones(len(perf)))
    assert torch.isfinite(w).all() and float(w.sum()) == pytest.approx(len(perf), rel=1e-5)
    for i, j in itertools.permutations(range(len(perf)), 2):
        if perf[i] < perf[j]:
            assert float(w[i]) >= float(w[j]) - 1e-6


def test_perf_bad_input():
    method = _setup(PerformanceWeighting(), 3)
    assert isinstance(method, PerformanceWeighting)
    with pytest.raises(ValueError, match="performance has 2 values for 3 terms"):
        method.observe_metrics(torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"performance must lie in \[0, 1\]"):
        method.observe_metrics(torch.tensor([0.5, 1.5, 0.2]))
    with pytest.raises(ValueError, match="performance must lie"):
        method.observe_metrics(torch.tensor([0.5, math.nan, 0.2]))
    for bad, what in [
        ({"form": "focal"}, "form"),
        ({"gamma": -1.0}, "gamma"),
        ({"momentum": 1.0}, "momentum"),
    ]:
        with pytest.raises(ValueError, match=what):
            PerformanceWeighting(**bad)


def test_performance_from_metric():
    assert performance_from_metric(0.8, "score") == 0.8
    assert performance_from_metric(1.2, "score") == 1.0
    assert performance_from_metric(2.0, "error", reference=2.0) == 0.5
    assert performance_from_metric(0.0, "error", reference=2.0) == 1.0
    assert performance_from_metric(6.0, "error", reference=2.0) == 0.25
    with pytest.raises(ValueError, match="reference"):
        performance_from_metric(1.0, "error")
    with pytest.raises(ValueError, match="kind"):
        performance_from_metric(1.0, "loss")  # type: ignore[arg-type]


# ======================================================================= curriculum
def _masks(method: Curriculum, losses: list[list[float]]) -> list[list[float]]:
    return [method.weigh(torch.tensor(v)).tolist() for v in losses]


def test_curriculum_explicit_order_and_interval():
    method = Curriculum("ew", order=["c", "a"], steps=2)
    method.setup(3, [])
    method.bind_tasks(["a", "b", "c"])
    got = _masks(method, [[1.0, 1.0, 1.0]] * 5)
    # c from step 0, a from step 2, b (not listed) from step 0
    assert got == [[0, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1]]


def test_curriculum_explicit_steps_times_inner_weights():
    losses = torch.tensor([0.5, 2.0, 1.0])
    inner = _setup(__import__("lossrag.weighting.scalarizers", fromlist=["STCH"]).STCH(), 3)
    expected = inner.weigh(losses)  # type: ignore[attr-defined]
    method = Curriculum("stch", order=["a", "b", "c"], steps=[0, 3, 1])
    method.setup(3, [])
    method.bind_tasks(["a", "b", "c"])
    got = [method.weigh(losses) for _ in range(4)]
    masks = [[1, 0, 0], [1, 0, 1], [1, 0, 1], [1, 1, 1]]
    for w, m in zip(got, masks, strict=True):
        torch.testing.assert_close(w, expected * torch.tensor(m, dtype=torch.float32))


@pytest.mark.parametrize(
    ("criterion", "order"), [("easiest-first", [1, 2, 0]), ("hardest-first", [0, 2, 1])]
)
def test_curriculum_measured_order(criterion, order):
    """Warm-up of 4 steps (windows of 1): r = L(step 3)/L(step 0) = (1.0, 0.1, 0.5)."""
    method = Curriculum("ew", steps=2, criterion=criterion, warmup=4)
    method.setup(3, [])
    series = [[2.0, 10.0, 4.0], [2.0, 5.0, 3.0], [2.0, 2.0, 2.5], [2.0, 1.0, 2.0]]
    assert _masks(method, series) == [[1.0, 1.0, 1.0]] * 4
    torch.testing.assert_close(
        method.relative_losses(), torch.tensor([1.0, 0.1, 0.5], dtype=torch.float64)
    )
    assert method.measured_order() == order
    after = _masks(method, [[1.0, 1.0, 1.0]] * 5)
    on_at = {order[0]: 0, order[1]: 2, order[2]: 4}  # steps after the warm-up
    for t, row in enumerate(after):
        assert row == [float(on_at[i] <= t) for i in range(3)]
    resumed = Curriculum("ew", steps=2, criterion=criterion, warmup=4)
    resumed.setup(3, [])
    resumed.load_state_dict(method.state_dict())
    assert _masks(resumed, [[1.0] * 3]) == _masks(method, [[1.0] * 3])


def test_curriculum_from_name_composes_and_forwards_flags():
    method = curriculum_from_name("curriculum+famo", lr=0.01, order=["a"], steps=5)
    assert method.inner.name == "famo" and method.inner.lr == 0.01  # type: ignore[attr-defined]
    assert method.needs_rerun and method.positive_losses
    assert method.order == ["a"] and method.stage_steps == 5
    assert curriculum_from_name("curriculum").inner.name == "ew"
    perf = curriculum_from_name("curriculum+perf")
    assert perf.needs_metrics  # type: ignore[attr-defined]
    perf.setup(2, [])
    perf.observe_metrics(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(perf.weigh(torch.ones(2)), torch.tensor([4 / 3, 2 / 3]))


def test_curriculum_bad_input():
    with pytest.raises(ValueError, match="inner must be a loss-based method"):
        Curriculum("mgda")
    with pytest.raises(ValueError, match="inner must be a loss-based method"):
        curriculum_from_name("curriculum+nashmtl")
    with pytest.raises(ValueError, match="steps must be >= 0"):
        Curriculum(order=["a"], steps=-1)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        Curriculum(order=["a", "b"], steps=[0, -3])
    with pytest.raises(ValueError, match="steps lists 1 switch-on steps for 2 tasks"):
        Curriculum(order=["a", "b"], steps=[0])
    with pytest.raises(ValueError, match="order names task 'a' twice"):
        Curriculum(order=["a", "a"])
    with pytest.raises(ValueError, match="criterion"):
        Curriculum(criterion="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warmup"):
        Curriculum(warmup=1)
    with pytest.raises(ValueError, match="curriculum\\+NAME"):
        curriculum_from_name("curriculum+")
    method = Curriculum(order=["depht", "normal"])
    method.setup(2, [])
    with pytest.raises(ValueError, match=r"order: Unknown task 'depht'\. Did you mean 'depth'"):
        method.bind_tasks(["depth", "normal"])
    unbound = Curriculum(order=["a"])
    unbound.setup(1, [])
    with pytest.raises(RuntimeError, match="bind_tasks"):
        unbound.weigh(torch.ones(1))
