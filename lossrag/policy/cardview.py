"""A policy's card as tables, for ``lossrag policies show``: what it is, how it was trained and
what it measured, at 80 columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from lossrag.policy.store import PolicyCard

__all__ = ["render_card"]


def _pairs(title: str, items: list[tuple[str, str]]) -> Table:
    """``items`` as a two-column table of names and values."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, show_header=False)
    table.add_column("name", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in items:
        table.add_row(name, value)
    return table


def _training(card: PolicyCard) -> list[tuple[str, str]]:
    """Problems, runs, time, the held-out meta-objective and the online phase's outcome."""
    training = card.training
    minutes = float(training.get("elapsed_s", 0.0)) / 60
    problems, runs = training.get("problems", "?"), training.get("runs", "?")
    items = [
        ("problems", f"{problems} generated, {runs} runs"),
        ("generations", str(training.get("generations", "?"))),
        ("time", f"{minutes:.0f} min on {training.get('workers', '?')} workers"),
    ]
    curve = training.get("objective", [])
    if curve:
        first, last = curve[0], curve[-1]
        items.append(
            (
                "meta-objective",
                f"{first['log_ratio_vs_ew']:+.4f} (generation {first['generation']}) -> "
                f"{last['log_ratio_vs_ew']:+.4f} (generation {last['generation']}): mean "
                "log-ratio of validation metrics against EW on held-out problems, higher is better",
            )
        )
    online = training.get("online", {})
    if online.get("rounds"):
        verdict = "ships" if online.get("shipped") else "does not ship (kept beside it)"
        items.append(
            (
                "correction Δφ",
                f"{online['rounds']} Reptile rounds; held-out objective "
                f"{online.get('prior_only', float('nan')):+.4f} without it, "
                f"{online.get('with_correction', float('nan')):+.4f} with it: {verdict}",
            )
        )
    return items


def _parameters(card: PolicyCard) -> Table:
    """The trained parameters, two to a row."""
    values = list(card.training.get("parameters", {}).items())
    table = Table(title="trained parameters", box=box.SIMPLE_HEAD, pad_edge=False)
    for _ in range(2):
        table.add_column("name")
        table.add_column("value", justify="right")
    for i in range(0, len(values), 2):
        row = [cell for name, value in values[i : i + 2] for cell in (name, f"{value:.4g}")]
        table.add_row(*row, *[""] * (4 - len(row)))
    return table


def _benchmark(name: str, result: dict[str, Any]) -> Group:
    """One suite's results: Δm per problem, the mean, the rank, the cost and the ablations."""
    own = result.get("lossrag-default", {})
    table = Table(title=f"\n{name}", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("problem")
    table.add_column("Δm %", justify="right")
    for problem, value in own.get("delta_m", {}).items():
        table.add_row(problem, f"{value:+.2f}")
    lines = [f"source: {result.get('source', '?')}; code {', '.join(result.get('code', []))}"]
    if "mean_delta_m" in own:
        ranks = [f"{k.replace('_', ' ')} {v}" for k, v in own.items() if k.startswith("mean_rank")]
        lines.append(f"mean Δm {own['mean_delta_m']:+.2f}; {'; '.join(ranks)}")
    cost = result.get("cost_x_ew", {})
    if cost:
        lines.append(
            f"cost against EW: median step {cost.get('median_step')}×, mean step "
            f"{cost.get('mean_step')}× ({cost.get('steps')} steps)"
        )
    ablations = result.get("ablations_mean_delta_m", {})
    if ablations:
        lines.append(
            "ablations, mean Δm: " + ", ".join(f"{k} {v:+.2f}" for k, v in ablations.items())
        )
    return Group(table, *(Text(line) for line in lines))


def render_card(card: PolicyCard, folder: Path) -> Group:
    """Everything ``card`` (read from ``folder``) says: identity and versions, the recipe's
    description, the training summary and parameters, the benchmarks it records, its files."""
    version = card.checksums.get("policy.json", "")[:12]
    identity = [
        ("policy", f"{card.name} (version {version}, the SHA-256 of policy.json; records name it)"),
        ("folder", str(folder)),
        ("format", f"policy {card.format}, embedding {card.embed_version}"),
        ("features", f"{card.features} per candidate"),
        ("written by", f"LossRAG {card.lossrag_version}, code {card.code or '?'}"),
        ("recipe", f"{card.recipe.get('name', '?')} (hash {card.recipe_hash[:12] or '?'})"),
        ("description", card.description),
    ]
    parts: list[Any] = [_pairs("policy card", identity), _pairs("training", _training(card))]
    if card.training.get("parameters"):
        parts.append(_parameters(card))
    parts += [_benchmark(name, result) for name, result in card.benchmarks.items()]
    files = ", ".join(sorted(card.checksums))
    plot = folder / "meta_objective.png"
    parts.append(Text(f"files (checksums verified): {files}"))
    if plot.is_file():
        parts.append(Text(f"meta-objective over generations: {plot}"))
    return Group(*parts)
