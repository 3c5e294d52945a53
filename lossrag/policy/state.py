"""A retrieval policy's state as plain containers and tensors, and back: what
:meth:`LossRAG.state_dict <lossrag.policy.LossRAG.state_dict>` saves in a checkpoint.

A mapping by term is nested ``{task: {loss: value}}`` (:func:`lossrag.keys.nest`); a state
written before term keys were typed (keyed by ``"task:loss"`` strings), before the retrieval
back-off or before the gross-error evidence still loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lossrag.index import Entry
from lossrag.keys import nest, unnest
from lossrag.policy.retrieval import Candidate

if TYPE_CHECKING:
    from lossrag.policy.lossrag import LossRAG

__all__ = ["load_state", "state_of"]


def state_of(policy: LossRAG) -> dict[str, Any]:
    """Active sets, library entries, scores, weights, smoothed context, schedule, candidates,
    corruption evidence, loss trackers, gates, the correction Δφ and its learner."""
    return {
        "active": {k: list(v) for k, v in policy.active.items()},
        "entries": {k: [e.name, dict(e.params), e.kind] for k, e in policy.library.entries.items()},
        "scores": nest(policy.scores),
        "weights": nest(policy.weights),
        "target_scale": dict(policy.library.target_scale),
        "smoothed": {k: list(v) for k, v in policy.smoothed.items()},
        **policy.schedule.state_dict(),
        "rank": policy.rank,
        "candidates": {
            k: [
                [c.entry, c.retrieval, c.explore, list(c.vector), c.gsnr, c.scale, c.gross_grad]
                for c in v
            ]
            for k, v in policy.candidates.items()
        },
        "gross": dict(policy.gross),
        "toward": dict(policy.toward),
        "tracker": policy.tracker.state_dict(),
        "gates": policy.gates.state_dict(),
        "correction": policy.correction.state_dict(),
        **policy.learner.state_dict(),
    }


def load_state(policy: LossRAG, state: dict[str, Any]) -> None:
    """Restore :func:`state_of` into a bound ``policy``."""
    tasks = list(policy.tasks)
    policy.library.entries = {
        k: Entry(n, dict(p), kind) for k, (n, p, kind) in state["entries"].items()
    }
    policy.active = {k: list(v) for k, v in state["active"].items()}
    policy.scores = {k: float(v) for k, v in unnest(state["scores"], tasks).items()}
    policy.weights = {k: float(v) for k, v in unnest(state["weights"], tasks).items()}
    policy.library.target_scale = dict(state["target_scale"])
    policy.smoothed = {k: list(v) for k, v in state["smoothed"].items()}
    policy.schedule.load_state_dict(state)
    retrieval = state.get("retrieval", ())
    policy.rank = float(state.get("rank", retrieval[3] if len(retrieval) > 3 else 0.0))
    policy.candidates = {  # a state from before the gross-error evidence has 6 fields
        k: [
            Candidate(e, float(r), bool(x), list(v), float(g), float(c), *map(float, rest))
            for e, r, x, v, g, c, *rest in cands
        ]
        for k, cands in state["candidates"].items()
    }
    policy.gross = {k: float(v) for k, v in state.get("gross", {}).items()}
    policy.toward = dict(state.get("toward", {}))
    policy.tracker.load_state_dict(state["tracker"], tasks)
    policy.gates.load_state_dict(state["gates"], tasks)
    policy.correction.load_state_dict(state["correction"])
    policy.learner.load_state_dict(state, tasks)
