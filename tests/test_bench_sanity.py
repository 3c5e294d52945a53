"""Sanity against the literature: what the baselines are known to do on the benchmark problems."""

from __future__ import annotations

import pytest
import torch

from lossrag.bench.fit import fit
from lossrag.bench.problems import get_problem
from lossrag.bench.toyrun import run_toy
from lossrag.weighting import UW


@pytest.mark.slow  # 15 epochs; UW's fixed point: test_weighting.py (fast)
def test_uw_weights_follow_inverse_noise_variance():
    """Kendall et al. 2018: at UW's fixed point each weight is 1/(2 L_i), so two equally scaled
    tasks with target noise σ = 1 and σ = 3 end with weights in the inverse ratio of their losses,
    which the noise dominates (σ₂²/σ₁² = 9; the losses also hold each task's fitting error)."""
    torch.set_num_threads(1)
    problem = get_problem("gradnorm-synth-t2", sigma_range=(1.0, 1.0), noise=[1.0, 3.0])
    weights, losses = [], []

    def keep(record):
        if record.step >= 1000:
            weights.append(record.task_weights())
            losses.append(record.losses)

    # UW(lr=1e-2): the fixed point is reached within 1,500 steps (at the benchmark's lr = 1e-3
    # the log-variances are still moving then)
    fit(problem, UW(lr=1e-2), seed=0, epochs=15, on_step=keep)
    w0 = sum(w["t0"] for w in weights) / len(weights)
    w1 = sum(w["t1"] for w in weights) / len(weights)
    l0 = sum(v["t0"] for v in losses) / len(losses)
    l1 = sum(v["t1"] for v in losses) / len(losses)
    assert 4 < l1 / l0 < 12  # the noisy task's loss is several times larger
    assert 0.6 < (w0 / w1) / (l1 / l0) < 1.4  # weights at UW's fixed point 1/(2L)


@pytest.mark.slow
def test_toy2d_ew_stalls_from_9_9_and_mgda_reaches_the_pareto_set():
    """CAGrad/Nash-MTL's toy (50k Adam steps): equal weighting gets stuck from (9, 9), MGDA
    reaches the Pareto set from every start point."""
    ew = run_toy("ew", 0, starts=[2])
    assert ew.pareto_distance[0] > 1.0
    mgda = run_toy("mgda", 0)
    assert (mgda.pareto_distance < 0.1).all()
