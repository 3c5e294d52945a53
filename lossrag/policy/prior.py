"""The hand-set prior the policy is residual to: favour slow learners, damp noisy terms."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Prior"]


def _z(values: Sequence[float], clip: float = 2.0) -> list[float]:
    """Values standardised across tasks and clipped (zeros when they do not vary)."""
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / n) ** 0.5
    if std < 1e-6:
        return [0.0] * n
    return [max(-clip, min(clip, (v - mean) / std)) for v in values]


def _grouped_z(values: Sequence[float], groups: Sequence[str]) -> list[float]:
    """:func:`_z` within each group (a group of one gets 0)."""
    out = [0.0] * len(values)
    for g in set(groups):
        idx = [i for i, h in enumerate(groups) if h == g]
        for i, z in zip(idx, _z([values[i] for i in idx]), strict=True):
            out[i] = z
    return out


class Prior(BaseModel):
    """Coefficients of the prior score, in logits of the weight softmax.

    A task's score is ``learn·z_r + align·cos(∇L/L, mean) + slow·z_s +
    learnable_slow·max(z_s, 0)·z_r``
    with ``z_r = z(log ‖∇L‖/L)`` and ``z_s = z(slope of log L)``, each ``z`` standardised across
    the tasks trained with the same loss function and clipped to ±2:

    - *learnability* ``‖∇L‖/L`` at the output of ``shared``: a task whose loss is mostly
      irreducible noise (``L = σ² + e``, ``∇L = ∇e``) has a small gradient for its loss, a clean
      task a large one, growing as it converges; this is what damps noisy terms. (The per-sample
      gradient signal-to-noise, the other candidate, was measured on ``mnist1d-noisy`` and did not
      separate the junk tasks: a task whose head bias has converged has anti-correlated
      per-sample gradients and a low value too. It stays a feature for the learned correction.)
    - *alignment* with the mean scale-normalised gradient: a junk task points nowhere in
      particular;
    - *slow learners* (a flat or rising ``log L``) get more weight, as in FAMO and GradNorm;
    - *learnable slow learners*: a junk task is a slow learner too (its loss is irreducible), so
      the interaction ``max(z_s, 0)·z_r`` gives the slow-learner bonus to learnable tasks and
      takes it from unlearnable ones (0 in the hand-set prior; meta-trained). Only slow learners
      (``z_s > 0``) get it: the plain product ``z_s·z_r`` also docked every fast, learnable task,
      which put the junk tasks of ``mnist1d-noisy`` above clean ones in every seed (with
      ``max``: below every clean task in seeds 0-2).

    A candidate other than the task's natural loss adds ``−switch_cost``: without evidence that
    the task's targets are corrupted, it keeps its natural loss. (A cleaner gradient alone, the
    candidate's log GSNR above the natural loss's, used to switch losses on clean problems: 7 of
    the twelve-problem suite's 36 runs, 0.07 points of Δm lost on average and up to 1.8 on one
    problem; 5 of 19 classification tasks on fresh clean generated problems, to strong label
    smoothing, accuracy −0.011 on average and −0.06 at worst.) Where a task shows corrupted targets
    (:mod:`lossrag.policy.evidence`: a share ``g`` of gross errors in a regression, of flipped
    labels in a classification, above its kind's floor ``f``: ``gross_floor``,
    ``label_floor``), a candidate also adds ``robust·(g − f)/f·relief``, the relief being how much
    less of its gradient the corrupted samples draw than of the natural loss's
    (:func:`~lossrag.policy.evidence.relief`): a loss that they mislead less is preferred in
    proportion to the evidence, and ``candidate·(its log GSNR − the natural loss's)`` breaks ties
    among the robust candidates. (On QM9's clean targets ``g`` stays below 0.006; 15 %
    of gross outliers give 0.05–0.09; 40 % flipped labels 0.08–0.22, the clean classification
    tasks of the suite at most 0.06 in one batch, mostly under 0.02. ``label_floor``'s default is
    set from these measurements; ES trains it with the others, but the shipped policy was trained
    before it existed and uses the default.)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    learn: float = Field(default=1.0, ge=0)
    align: float = Field(default=0.5, ge=0)
    slow: float = Field(default=0.25, ge=0)
    learnable_slow: float = Field(default=0.0, ge=0)
    candidate: float = Field(default=0.5, ge=0)
    switch_cost: float = Field(default=1.0, ge=0)
    robust: float = Field(default=2.0, ge=0)
    gross_floor: float = Field(default=0.02, gt=0, lt=1)
    label_floor: float = Field(default=0.04, gt=0, lt=1)

    def task_scores(
        self,
        norm_ratio: Sequence[float],
        cos_mean: Sequence[float],
        slopes: Sequence[float],
        groups: Sequence[str],
    ) -> list[float]:
        """One score per task (see the class docstring). Learnability and slopes are compared
        only between tasks of one ``groups`` value (their loss function): ``‖∇L‖/L`` of a
        cross-entropy and of a squared error differ by construction."""
        learn, slow = _grouped_z(norm_ratio, groups), _grouped_z(slopes, groups)
        return [
            self.learn * r + self.align * c + self.slow * s + self.learnable_slow * max(s, 0) * r
            for r, c, s in zip(learn, cos_mean, slow, strict=True)
        ]

    def floor_of(self, kind: str) -> float:
        """The floor of a task kind's corruption evidence: ``label_floor`` for classification,
        ``gross_floor`` otherwise."""
        return self.label_floor if kind == "classification" else self.gross_floor

    def candidate_score(
        self,
        gsnr: float,
        natural_gsnr: float,
        gross: float = 0.0,
        relief: float = 0.0,
        kind: str = "regression",
    ) -> float:
        """What a non-natural candidate of a task of ``kind`` adds to its task's score
        (``gross``: the task's share of corrupted samples; ``relief``: how much less of its
        gradient they draw than of the natural loss's)."""
        floor = self.floor_of(kind)
        evidence = max(0.0, gross - floor) / floor
        if evidence == 0.0:  # no reason to leave the natural loss
            return -self.switch_cost
        return (
            self.candidate * (gsnr - natural_gsnr)
            - self.switch_cost
            + self.robust * evidence * relief
        )
