"""Loss embeddings: family one-hot, shape signature and probe statistics, block-normalised.

The raw vector of a library entry is computed once on the canonical probe of its task kind
(:func:`~lossrag.embed.probe.canonical_probe`); a :class:`Normaliser` fitted on the whole library
z-scores the two continuous blocks, gives every block the same weight and L2-normalises the
result, so inner products are cosines. The same raw statistics can be taken on a user's model
(:meth:`Embedder.on_model`) and normalised with the library's constants, which places a loss *as
it behaves on that model* in the space of the index.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lossrag.embed.probe import Probe, canonical_probe, probe_loss
from lossrag.embed.stats import (
    PROBE_STATS,
    SIGNATURE,
    Reference,
    output_gradients,
    probe_statistics,
    signature,
)
from lossrag.losses import LossRegistry, registry
from lossrag.losses.spec import FAMILIES

__all__ = ["EMBED_VERSION", "RAW_DIM", "Embedder", "Normaliser", "variant_id"]

#: Bumped whenever the raw statistics change; an index records the version it was built with.
EMBED_VERSION = 1
_BLOCKS = (len(FAMILIES), len(SIGNATURE), len(PROBE_STATS))
#: Length of a raw (and of a normalised) embedding.
RAW_DIM = sum(_BLOCKS)


def variant_id(name: str, params: Mapping[str, float]) -> str:
    """The id of a library entry, e.g. ``huber(delta=0.5)`` (``l2`` without parameters)."""
    if not params:
        return name
    return f"{name}({', '.join(f'{k}={v:.6g}' for k, v in sorted(params.items()))})"


@dataclass
class Normaliser:
    """Per-dimension mean and spread of the continuous blocks, fitted on a library."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, raw: np.ndarray) -> Normaliser:
        """Fit on the ``(n, RAW_DIM)`` raw embeddings of a library."""
        n_onehot = _BLOCKS[0]
        mean = np.zeros(RAW_DIM)
        std = np.ones(RAW_DIM)
        mean[n_onehot:] = raw[:, n_onehot:].mean(0)
        std[n_onehot:] = np.maximum(raw[:, n_onehot:].std(0), 1e-3)
        return cls(mean, std)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Normalised, L2-unit ``float32`` rows of ``raw`` (``(n, RAW_DIM)`` or ``(RAW_DIM,)``)."""
        x = (np.atleast_2d(raw) - self.mean) / self.std
        # the family one-hot has norm 1; each continuous block an expected norm of 1 before the
        # family is halved, so a loss's shape and statistics outweigh its family name
        x[:, : _BLOCKS[0]] *= 0.5
        start = _BLOCKS[0]
        for size in _BLOCKS[1:]:
            x[:, start : start + size] /= math.sqrt(size)
            start += size
        x = np.clip(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), -10, 10)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        out = x.astype(np.float32)
        return out if raw.ndim == 2 else out[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready constants."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normaliser:
        """Inverse of :meth:`to_dict`; a length other than ``RAW_DIM`` is a ValueError."""
        mean, std = np.asarray(data["mean"], float), np.asarray(data["std"], float)
        if mean.shape != (RAW_DIM,) or std.shape != (RAW_DIM,):
            raise ValueError(f"Normaliser: expected {RAW_DIM} values, got {mean.shape}.")
        return cls(mean, std)


class Embedder:
    """Computes raw loss embeddings on the canonical probes or on a user's model.

    Args:
        losses: The registry the names refer to (the shipped library by default).
    """

    def __init__(self, losses: LossRegistry = registry) -> None:
        self.losses = losses
        self._probes: dict[str, tuple[Probe, Reference]] = {}
        self._signatures: dict[str, list[float]] = {}

    def _probe(self, kind: str) -> tuple[Probe, Reference]:
        if kind not in self._probes:
            probe = canonical_probe(kind)
            [(values, grad)] = output_gradients(
                [lambda z, y: probe_loss(kind, z, y)], probe.outputs(), probe.targets
            )
            self._probes[kind] = (probe, Reference.of(values, grad, self._to_head(probe, grad)))
        return self._probes[kind]

    @staticmethod
    def _to_head(probe: Probe, grad: Tensor) -> Tensor:
        return grad if probe.head is None else grad @ probe.head.T

    def _static(self, name: str, params: Mapping[str, float], kind: str) -> list[float]:
        key = variant_id(name, params)
        if key not in self._signatures:
            spec = self.losses.spec(name)
            if kind not in spec.kinds:
                raise ValueError(
                    f"Loss {name!r} applies to {', '.join(spec.kinds)} tasks, not {kind!r}."
                )
            onehot = [float(f == spec.family) for f in FAMILIES]
            fn = self._call(name, params)
            self._signatures[key] = onehot + signature(fn, kind)
        return self._signatures[key]

    def _call(self, name: str, params: Mapping[str, float]) -> Callable[[Tensor, Tensor], Tensor]:
        module = self.losses.create(name, **params)
        return module.forward

    def canonical(self, name: str, params: Mapping[str, float], kind: str) -> np.ndarray:
        """The raw embedding of one library entry on the canonical probe of ``kind``."""
        probe, ref = self._probe(kind)
        [(values, grad)] = output_gradients(
            [self._call(name, params)], probe.outputs(), probe.targets
        )
        stats = probe_statistics(values, grad, self._to_head(probe, grad), ref)
        return np.asarray(self._static(name, params, kind) + stats)

    def library(
        self,
        entries: Iterable[tuple[str, Mapping[str, float]]],
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Raw ``(n, RAW_DIM)`` embeddings of ``(name, params)`` entries, each on its own kind.

        ``progress(1)`` is called after each entry (e.g. a progress bar's advance).
        """
        rows = []
        for name, params in entries:
            rows.append(self.canonical(name, params, self.losses.spec(name).kinds[0]))
            if progress is not None:
                progress(1)
        return np.stack(rows) if rows else np.zeros((0, RAW_DIM))

    def on_model(
        self,
        kind: str,
        candidates: Sequence[tuple[str, Mapping[str, float], Callable[[Tensor, Tensor], Tensor]]],
        outputs: Tensor,
        targets: Tensor,
        features: Tensor,
    ) -> list[np.ndarray]:
        """Raw embeddings of losses as they behave on a user's model at this batch.

        Output-space gradients come from the loss alone (detached outputs); the gradients at the
        head's input from one batched vector-Jacobian product through the head for all
        candidates and the probe loss together.

        Args:
            candidates: ``(name, params, loss function)`` per loss.
            outputs: What the losses see, with its graph to ``features`` (the output of
                ``shared``); for representation tasks ``outputs`` is ``features``.
        """
        fns = [fn for _, _, fn in candidates]
        fns.append(lambda z, y: probe_loss(kind, z, y))
        measured = output_gradients(fns, outputs, targets)
        grads = torch.stack([g.reshape(outputs.shape) for _, g in measured])
        if outputs is features:
            head = grads.flatten(2)
        else:
            (head,) = torch.autograd.grad(
                outputs, features, grads, retain_graph=True, is_grads_batched=True
            )
            head = head.flatten(2)
        ref = Reference.of(measured[-1][0], measured[-1][1], head[-1])
        return [
            np.asarray(self._static(name, params, kind) + probe_statistics(values, g, head[i], ref))
            for i, ((name, params, _), (values, g)) in enumerate(
                zip(candidates, measured, strict=False)
            )
        ]
