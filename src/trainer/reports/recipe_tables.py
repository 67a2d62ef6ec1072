"""The table of scripts/compare_recipes.py: fine-tuning recipes side by side over a suite of photo sets.

One table per setting (model, image size, epochs, train photos per class, resplit): a row per photo set with
each recipe's mean val top-1 over its seeds and the half-width of a 95% interval, then the mean over the sets
every recipe ran on, the average rank there (1 = best) and wins/ties/losses against the plain recipe. The
interval is Wilson's over every val prediction of the seeds: a small val split is a noisy yardstick, and a
gap inside it is no gap. A win is a mean above the plain recipe's interval, a loss one below it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

PLAIN = "plain"


def wilson(correct: float, n: int, z: float = 1.96) -> tuple[float, float]:
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def override(base: list[str], key: str, default: str) -> str:
    """The value of `key=` among train.py overrides, or `default`."""
    return next((o.split("=", 1)[1] for o in base if o.startswith(f"{key}=")), default)


class Cell:
    """One recipe on one photo set: mean top-1 over seeds and its 95% interval."""

    def __init__(self, runs: list[dict]) -> None:
        self.seeds = len(runs)
        self.top1 = sum(r["val_top1"] for r in runs) / len(runs)
        n = runs[0]["val_images"] * len(runs)
        self.low, self.high = wilson(self.top1 * n, n)

    def __str__(self) -> str:
        seeds = f" ({self.seeds} seeds)" if self.seeds > 1 else ""
        return f"{100 * self.top1:.1f} ±{50 * (self.high - self.low):.1f}{seeds}"


def _setting(row: dict) -> tuple:
    model = override(row["base"], "model", "demo")
    cap = row.get("max_train_per_class")
    return (model, row["image_size"], row["epochs"], cap or "all", row.get("resplit") or "no")


def _ranks(cells: dict[str, Cell]) -> dict[str, float]:
    """Rank 1 = highest top-1; ties share the mean of their ranks."""
    order = sorted(cells, key=lambda r: -cells[r].top1)
    ranks: dict[str, float] = {}
    for name in order:
        tied = [i + 1 for i, other in enumerate(order) if cells[other].top1 == cells[name].top1]
        ranks[name] = sum(tied) / len(tied)
    return ranks


def suite_table(rows: list[dict]) -> str:
    """Markdown: per setting, a row per photo set and a column per recipe, then mean, rank, W/T/L vs plain."""
    cells: dict[tuple, dict[str, dict[str, list[dict]]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        data = Path(override(r["base"], "dataset.root", "demo")).name
        cells[_setting(r)][data].setdefault(r["recipe"], []).append(r)
    return "\n\n".join(_one_setting(setting, data) for setting, data in sorted(cells.items(), key=str))


def _one_setting(setting: tuple, runs: dict[str, dict[str, list[dict]]]) -> str:
    by_set = {d: {name: Cell(rs) for name, rs in recipes.items()} for d, recipes in sorted(runs.items())}
    recipes = sorted({name for cells in by_set.values() for name in cells})
    common = [d for d, cells in by_set.items() if set(cells) == set(recipes)]
    mean = {n: sum(by_set[d][n].top1 for d in common) / len(common) if common else math.nan for n in recipes}
    recipes.sort(key=lambda n: (n != PLAIN, -mean[n]))
    ranks = [_ranks(by_set[d]) for d in common]
    model, px, epochs, cap, resplit = setting
    lines = [
        f"**{model}, {px} px, {epochs} epochs, train photos per class: {cap}, resplit: {resplit}**",
        "",
        f"| photo set | {' | '.join(recipes)} |",
        "|---|" + "---|" * len(recipes),
    ]
    for data, cells in by_set.items():
        lines.append(f"| {data} | " + " | ".join(str(cells.get(n, "")) for n in recipes) + " |")
    means = (f"{100 * mean[n]:.1f}" if common else "" for n in recipes)
    lines.append(f"| mean over {len(common)} sets | " + " | ".join(means) + " |")
    lines.append(
        "| average rank | "
        + " | ".join(f"{sum(r[n] for r in ranks) / len(ranks):.1f}" if ranks else "" for n in recipes)
        + " |"
    )
    lines.append("| vs plain: wins/ties/losses | " + " | ".join(_wtl(by_set, n) for n in recipes) + " |")
    return "\n".join(lines)


def _wtl(by_set: dict[str, dict[str, Cell]], name: str) -> str:
    """Sets where `name` is above / inside / below the plain recipe's interval."""
    if name == PLAIN:
        return ""
    pairs = [(c[name], c[PLAIN]) for c in by_set.values() if name in c and PLAIN in c]
    if not pairs:
        return ""
    wins = sum(cell.top1 > plain.high for cell, plain in pairs)
    losses = sum(cell.top1 < plain.low for cell, plain in pairs)
    return f"{wins}/{len(pairs) - wins - losses}/{losses}"
