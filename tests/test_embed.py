"""Loss embeddings: finite, unit-norm, sensible neighbours, stable across models and scales."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lossrag import registry
from lossrag.embed import RAW_DIM, Embedder, canonical_probe, probe_loss, signature
from lossrag.index import default_index
from lossrag.losses.spec import LossSpec


@pytest.fixture(scope="module")
def index():
    return default_index()


def _cos(index, a: str, b: str) -> float:
    return float(index.vectors[index.row(a)] @ index.vectors[index.row(b)])


def test_every_library_entry_embeds_to_a_finite_unit_vector(index):
    assert len(index) == len(registry.variants())
    assert np.isfinite(index.vectors).all()
    np.testing.assert_allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-5)


def test_shape_signature_matches_the_analytic_elasticities():
    def fn(name: str, **p: float):
        return registry.create(name, **p).forward

    # L2's gradient grows like r (elasticity 1), L1's is constant (0), CE's like 1 - p (1)
    np.testing.assert_allclose(signature(fn("l2"), "regression")[:6], 1.0, atol=1e-6)
    np.testing.assert_allclose(signature(fn("l1"), "regression")[:6], 0.0, atol=1e-6)
    assert min(signature(fn("ce"), "classification")[:6]) > 0.9
    # Huber(0.5) turns from 1 to 0 past the kink; pinball(0.2) is asymmetric
    huber = signature(fn("huber", delta=0.5), "regression")
    assert huber[0] == pytest.approx(1.0) and huber[5] == pytest.approx(0.0)
    assert abs(signature(fn("pinball", tau=0.2), "regression")[6]) > 1.0


def test_neighbours_make_sense(index):
    # L1 is close to Huber with a small kink and far from Huber with a large one or from L2
    small, large = _cos(index, "l1", "huber(delta=0.01)"), _cos(index, "l1", "huber(delta=10)")
    assert small > 0.8 > large
    assert small > _cos(index, "l1", "l2")
    # the nearest classification losses to CE include label smoothing
    hits = index.search(index.vectors[index.row("ce")], "classification", 6)[0]
    assert any(h.entry.name == "label_smoothing" for h in hits)
    assert _cos(index, "ce", "label_smoothing(eps=0.02)") > _cos(index, "ce", "focal(gamma=5)")


class _Net(torch.nn.Module):
    def __init__(self, seed: int, out: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU())
        self.head = torch.nn.Linear(32, out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return h, self.head(h)


LOSSES = {
    "regression": [("l2", {}), ("l1", {}), ("huber", {"delta": 0.5}), ("cauchy", {"scale": 1.0})],
    "classification": [("ce", {}), ("focal", {"gamma": 2.0}), ("label_smoothing", {"eps": 0.1})],
    "multilabel": [("bce", {}), ("focal_bce", {"gamma": 2.0, "alpha": 0.25})],
}


def _on_model(kind: str, seed: int, scale: float = 1.0, standardise: bool = True):
    g = torch.Generator().manual_seed(100)
    x = torch.randn(256, 16, generator=g)
    out_dim = {"regression": 1, "classification": 5, "multilabel": 4}[kind]
    if kind == "regression":
        y = scale * (x[:, 0] + 0.5 * torch.randn(256, generator=g))
    elif kind == "classification":
        y = (x[:, :5] + torch.randn(256, 5, generator=g)).argmax(1)
    else:
        y = (x[:, :4] + torch.randn(256, 4, generator=g) > 0).float()
    h, out = _Net(seed, out_dim)(x)
    if kind == "regression":
        out = scale * out.squeeze(1)
        if standardise:
            s = y.std()
            out, y = out / s, y / s
    cands = [(n, p, registry.create(n, **p).forward) for n, p in LOSSES[kind]]
    return Embedder().on_model(kind, cands, out, y, h)


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_embeddings_are_stable_across_random_models(index, kind):
    a = index.normaliser(np.stack(_on_model(kind, seed=1)))
    b = index.normaliser(np.stack(_on_model(kind, seed=2)))
    cos = (a * b).sum(1)
    assert cos.min() >= 0.9, dict(zip([n for n, _ in LOSSES[kind]], cos.round(3), strict=True))


def test_embeddings_are_stable_across_rescaled_targets(index):
    base = index.normaliser(np.stack(_on_model("regression", seed=1)))
    scaled = index.normaliser(np.stack(_on_model("regression", seed=1, scale=1000.0)))
    assert (base * scaled).sum(1).min() > 0.99
    # without the target standardisation the robust losses would change character
    raw = index.normaliser(
        np.stack(_on_model("regression", seed=1, scale=1000.0, standardise=False))
    )
    assert (base * raw).sum(1).min() < 0.9


def test_probe_losses_are_not_library_members_and_are_finite():
    for kind in ("regression", "classification", "multilabel", "representation"):
        probe = canonical_probe(kind)
        values = probe_loss(kind, probe.outputs(), probe.targets)
        assert values.shape == (len(probe.features),)
        assert torch.isfinite(values).all()


@pytest.mark.parametrize("size", [1e-30, 1.0, 1e12])
def test_extreme_values_give_finite_embeddings(index, size):
    h = torch.full((8, 3), size).requires_grad_(True)
    out = h @ torch.tensor([1.0, -2.0, 0.5])
    target = torch.zeros(8)
    cands = [
        (n, registry.spec(n).defaults, registry.create(n).forward)
        for n in ("l2", "tukey", "cauchy", "welsch", "student_t_nll")
    ]
    raws = Embedder().on_model("regression", cands, out, target, h)
    for raw in raws:
        assert raw.shape == (RAW_DIM,)
        assert np.isfinite(raw).all()
        assert np.isfinite(index.normaliser(raw)).all()


def test_densified_grid_keeps_the_card_grid():
    spec: LossSpec = registry.spec("huber")
    dense = [p["delta"] for p in spec.grid(density=3)]
    assert set(spec.params["delta"].grid) <= set(dense)
    assert len(dense) == 3 * (len(spec.params["delta"].grid) - 1) + 1
    assert dense == sorted(dense)
    with pytest.raises(ValueError, match="density"):
        spec.grid(density=0)
