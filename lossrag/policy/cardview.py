"""A policy's card as tables, for ``lossrag policies show``: what it is, how it was trained and
what it measured. A card's ``training`` and ``benchmarks`` are free-form (older cards, cards of
other recipes): nothing here assumes more of them than their types show."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from lossrag.policy.store import PolicyCard

__all__ = ["render_card"]


def _value(value: Any) -> str:
    """A card's value as text: a number to 4 significant digits, a list item by item."""
    if isinstance(value, bool) or not isinstance(value, int | float | list):
        return str(value)
    if isinstance(value, list):
        return ", ".join(map(_value, value))
    return f"{value:.4g}"


def _pairs(title: str, items: list[tuple[str, str]]) -> Group:
    """``title``, then ``items`` as a two-column table of names and values (shown as written,
    not as markup)."""
    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column("name", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in items:
        table.add_row(escape(name), escape(value))
    return Group(Text(f"\n{title}", style="bold underline"), table)


def _tree(title: str, value: Any) -> list[RenderableType]:
    """A nested mapping (a card's benchmarks) as one table per level: its plain values, then
    each nested mapping under its path."""
    if not isinstance(value, dict):
        return [_pairs(title, [("", _value(value))])]
    plain = [(str(k), _value(v)) for k, v in value.items() if not isinstance(v, dict)]
    parts: list[RenderableType] = [_pairs(title, plain)] if plain else []
    for key, nested in value.items():
        if isinstance(nested, dict):
            parts += _tree(f"{title} › {key}", nested)
    return parts


def _objective(entry: Any) -> float | None:
    """A point of the meta-objective's history: ``{"log_ratio_vs_ew": ...}`` or a number."""
    if isinstance(entry, dict):
        entry = entry.get("log_ratio_vs_ew")
    return float(entry) if isinstance(entry, int | float) else None


def _training(training: dict[str, Any]) -> list[tuple[str, str]]:
    """Problems, runs, time, the held-out meta-objective and the online phase's outcome."""
    items: list[tuple[str, str]] = [
        (k, _value(training[k])) for k in ("problems", "runs", "generations") if k in training
    ]
    if isinstance(training.get("elapsed_s"), int | float):
        seconds, workers = training["elapsed_s"], training.get("workers", "?")
        spent = f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"
        items.append(("time", f"{spent} on {workers} worker{'' if workers == 1 else 's'}"))
    curve = [o for o in map(_objective, training.get("objective") or []) if o is not None]
    if curve:
        reference = training.get("reference") or (
            "EW on raw targets (the card predates the reference's target normalisation: much "
            "of the difference can be the policy's own target normalisation)"
        )
        fell = "; it fell during training" if curve[-1] < curve[0] else ""
        items.append(
            (
                "meta-objective",
                f"{curve[0]:+.4f} -> {curve[-1]:+.4f} over {len(curve)} evaluations (mean "
                f"log-ratio of validation metrics against {reference}, on held-out problems; "
                f"higher is better{fell})",
            )
        )
    online = training.get("online")
    if isinstance(online, dict) and online.get("rounds"):
        said = f"{_value(online['rounds'])} Reptile rounds"
        alone, corrected = online.get("prior_only"), online.get("with_correction")
        if isinstance(alone, int | float) and isinstance(corrected, int | float):
            digits = 4 if f"{alone:+.4f}" != f"{corrected:+.4f}" else 6  # a near tie, told apart
            said += (
                f"; held-out objective {alone:+.{digits}f} without it, {corrected:+.{digits}f} "
                f"with it{gain_note(online)}"
            )
        said += ": ships" if online.get("shipped") else ": does not ship (kept beside it)"
        items.append(("correction Δφ", said))
    return items


def gain_note(online: dict[str, Any]) -> str:
    """The standard error of the correction's held-out gain, in words, where the online phase
    measured it (cards trained before: nothing)."""
    if "gain_se" not in online:
        return ""
    se = online["gain_se"]
    if not isinstance(se, int | float):  # one held-out problem, or a non-finite objective
        return " (no standard error of the gain)"
    return f" (standard error of the gain {se:.2g})"


def render_card(card: PolicyCard, folder: Path) -> Group:
    """Everything ``card`` (read from ``folder``, its files checked) says: identity and
    versions, the recipe's description, the training summary and parameters, the policy's
    settings, the benchmarks it records, its files."""
    identity = [
        ("policy", f"{card.name}, version {card.version or '?'} (as step records name it)"),
        ("folder", str(folder)),
        ("format", f"policy {card.format}, embedding {card.embed_version}"),
        ("features", f"{card.features} per candidate"),
        ("written by", f"LossRAG {card.lossrag_version}, code {card.code or '?'}"),
        ("recipe", f"{card.recipe.get('name', '?')} (hash {card.recipe_hash[:12] or '?'})"),
        ("description", card.description),
    ]
    parts: list[RenderableType] = [_pairs("policy card", identity)]
    parts.append(_pairs("training", _training(card.training)))
    parameters = card.training.get("parameters")
    if isinstance(parameters, dict):
        parts.append(_pairs("trained parameters", [(k, _value(v)) for k, v in parameters.items()]))
    settings = json.loads((folder / "policy.json").read_text())
    if isinstance(settings, dict):  # its prior is among the trained parameters
        parts += _tree(
            "settings (policy.json)", {k: v for k, v in settings.items() if k != "prior"}
        )
    for name, result in card.benchmarks.items():
        parts += _tree(f"benchmarks › {name}", result)
    parts.append(Text(f"files (checksums verified): {', '.join(sorted(card.checksums))}"))
    plot = folder / "meta_objective.png"
    if plot.is_file():
        parts.append(Text(f"meta-objective over generations: {plot}"))
    return Group(*parts)
