"""The compressed copies (int8, W8A8, palettized, fp16 weights) across runs: how often each kind changes an
answer, and what it costs in top-1 pooled over every run.

Pooled, because one run cannot tell: on a 150-photo val set one photo is 0.65 points, so a copy that loses one
photo net "loses more than 0.5 points" by chance alone. Summing the photos lost and gained over the runs of a
sweep or a suite of sets gives a drop whose interval is narrow enough to compare with a bound like 0.5 points.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from trainer.reports.collect import Run
from trainer.reports.table import runtime_key
from trainer.utils.stats import sign_test

Z95 = 1.959964  # two-sided 95% normal quantile


@dataclass
class PooledCopies:
    """One kind of compressed copy (`onnx_int8`, `coreml_w8a8`, ...) over the runs that have it."""

    key: str
    agreements: list[float]  # per run, share of val photos whose class matches fp32
    gate_passed: int  # runs whose copy passed its agreement gate (export.min_agreement)
    photos: int  # val photos over those runs
    lost: int  # photos fp32 got right and the copy got wrong, summed over the runs
    gained: int

    @property
    def drop_points(self) -> float:
        """Pooled top-1 drop against fp32, in percentage points (negative: the copies gained)."""
        return 100.0 * (self.lost - self.gained) / self.photos

    @property
    def drop_interval(self) -> tuple[float, float]:
        """95% interval of the pooled drop (normal approximation of the paired difference)."""
        net = self.lost - self.gained
        variance = max(self.lost + self.gained - net * net / self.photos, 0.0)
        half = 100.0 * Z95 * math.sqrt(variance) / self.photos
        return self.drop_points - half, self.drop_points + half

    @property
    def p_value(self) -> float:
        """One-sided sign test of the pooled drop (utils.stats.sign_test)."""
        return sign_test(self.lost, self.gained)


def pool_copies(runs: list[Run]) -> list[PooledCopies]:
    """Every classifier copy with an agreement gate and its photos lost and gained, pooled per kind in the
    order first seen; copies without those figures (not run here, e.g. Core ML without macOS or the
    reference executor) are left out."""
    pooled: dict[str, PooledCopies] = {}
    for run in runs:
        photos = run.manifest.get("val_images")
        for entry in run.manifest.get("artifacts", []):
            # against the format's own fp32 file; Core ML, which has none here, against fp32 PyTorch
            lost_gained = entry.get("top1_images_lost_gained")
            lost_gained = lost_gained or entry.get("top1_images_lost_gained_vs_pytorch")
            gate = entry.get("agreement_gate")
            if not (photos and lost_gained and gate and entry.get("top1_agreement") is not None):
                continue
            key = runtime_key(entry)
            copies = pooled.setdefault(key, PooledCopies(key, [], 0, 0, 0, 0))
            copies.agreements.append(float(entry["top1_agreement"]))
            copies.gate_passed += bool(gate.get("passed"))
            copies.photos += int(photos)
            copies.lost += int(lost_gained[0])
            copies.gained += int(lost_gained[1])
    return list(pooled.values())


def quantized_markdown(runs: list[Run]) -> list[str]:
    """The report.md section: one row per kind of compressed copy (nothing when no run has one)."""
    pooled = pool_copies(runs)
    if not pooled:
        return []
    lines = [
        "## Compressed copies against fp32, pooled over the runs",
        "",
        "| copy | runs | agreement: lowest / median | agreement gate passed | photos lost / gained "
        "| pooled top-1 drop (95% interval) | sign-test p |",
        "|---|---|---|---|---|---|---|",
    ]
    for copies in pooled:
        low, high = copies.drop_interval
        lines.append(
            f"| {copies.key} | {len(copies.agreements)} | {100 * min(copies.agreements):.1f}% / "
            f"{100 * statistics.median(copies.agreements):.1f}% | {copies.gate_passed} of "
            f"{len(copies.agreements)} | {copies.lost} / {copies.gained} of {copies.photos} | "
            f"{copies.drop_points:+.2f} pts ({low:+.2f} to {high:+.2f}) | {copies.p_value:.2g} |"
        )
    lines += [
        "",
        "Agreement: the share of val photos on which the copy, run in its own runtime, picks the fp32 "
        "model's class. Photos lost: fp32 right, the copy wrong (gained: the reverse). One run's drop is a "
        "photo or two on a small val set; pooled over the runs it can be told from chance.",
        "",
    ]
    return lines
