"""The dataset audit: what a careful person checks by hand before spending hours on training.

Exact copies (same bytes) within a split and across train/val, near copies (resized or re-encoded: a
difference hash within NEAR_BITS bits), copies filed under two classes, class balance, images much smaller
than the training resolution, and classes whose every image is grayscale. It reads only what the scan
already learned about each file (trainer.data.facts, cached by file stat), so it costs no extra decoding.

A val image that is a copy of a train image inflates val accuracy (leakage): `dataset.on_leakage` warns
(default), stops the run (`error`) or drops the val copies (`drop`).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import combinations
from typing import Any

from trainer.data.index import DatasetIndex
from trainer.data.scan import require_every_class, scan_files

log = logging.getLogger(__name__)

NEAR_BITS = 3  # dhash bits two near copies may differ in; 4 bands of 16 bits then find every such pair
BANDS = 4
COLOUR_TOLERANCE = 16  # re-encoding moves a quarter's mean colour by a few levels at most
MIN_DETAIL_BITS = 8  # hashes with fewer set (or unset) bits are flat pictures: they all look alike
EXAMPLES = 5
MAX_GROUP = 64  # copies compared pairwise; larger groups are compared with their first member


class LeakageError(ValueError):
    """Val images are copies of train images and `dataset.on_leakage=error` asked to stop."""


def _same_colours(a: list[int], b: list[int]) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) <= COLOUR_TOLERANCE


def _detailed(dhash: str) -> bool:
    ones = bin(int(dhash, 16)).count("1")
    return MIN_DETAIL_BITS <= ones <= 64 - MIN_DETAIL_BITS


def _near_pairs(facts: dict[str, dict[str, Any]]) -> set[tuple[str, str]]:
    """Pairs of paths whose dhashes differ in at most NEAR_BITS bits (one of the 4 bands must then agree)
    and whose colour layouts agree within COLOUR_TOLERANCE (periodic textures share dhashes, not colours)."""
    values = {p: int(f["dhash"], 16) for p, f in facts.items() if _detailed(f["dhash"])}
    pairs: set[tuple[str, str]] = set()
    for band in range(BANDS):
        buckets: dict[int, list[str]] = defaultdict(list)
        for path, value in values.items():
            buckets[(value >> (16 * band)) & 0xFFFF].append(path)
        for members in buckets.values():
            for a, b in _candidate_pairs(sorted(members)):
                close = bin(values[a] ^ values[b]).count("1") <= NEAR_BITS
                if close and _same_colours(facts[a]["colours"], facts[b]["colours"]):
                    pairs.add((a, b))
    return pairs


def _candidate_pairs(members: list[str]) -> Iterable[tuple[str, str]]:
    """Every pair of a small group; in a large one (thousands of copies) each member against the first, so
    a hostile dataset cannot make the audit quadratic."""
    if len(members) <= MAX_GROUP:
        return combinations(members, 2)
    return ((members[0], other) for other in members[1:])


def _summary(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    pairs = sorted(pairs)
    return {"pairs": len(pairs), "examples": [list(p) for p in pairs[:EXAMPLES]]}


def audit_index(index: DatasetIndex, facts: dict[str, dict[str, Any]], image_size: int) -> dict[str, Any]:
    """The audit report of `index` (JSON-ready) from the scan's per-file facts."""
    split_of = {p: "train" for p, _ in index.train} | {p: "val" for p, _ in index.val}
    label_of = dict(index.train + index.val)
    usable = {p: facts[p] for p in split_of if facts.get(p, {}).get("error") is None}

    by_sha: dict[str, list[str]] = defaultdict(list)
    for path, f in usable.items():
        by_sha[f["sha256"]].append(path)
    exact = {"train": set(), "val": set(), "across": set()}
    for paths in by_sha.values():
        for a, b in _candidate_pairs(sorted(paths, key=lambda p: (split_of[p] != "train", p))):
            kind = split_of[a] if split_of[a] == split_of[b] else "across"
            exact[kind].add((a, b) if split_of[a] == "train" or kind != "across" else (b, a))
    exact_pairs = set().union(*exact.values())
    near = {"train": set(), "val": set(), "across": set()}
    for a, b in _near_pairs(usable):
        if (a, b) in exact_pairs or (b, a) in exact_pairs:
            continue
        kind = split_of[a] if split_of[a] == split_of[b] else "across"
        near[kind].add((a, b) if split_of[a] == "train" or kind != "across" else (b, a))
    conflicting = sorted(
        (a, b) for a, b in exact_pairs | set().union(*near.values()) if label_of[a] != label_of[b]
    )

    per_split = {
        split: Counter(y for _, y in samples)
        for split, samples in (("train", index.train), ("val", index.val))
    }
    counts = {
        name: {split: per_split[split][i] for split in per_split} for i, name in enumerate(index.classes)
    }
    train_counts = [c["train"] for c in counts.values()]
    imbalance = max(train_counts) / max(1, min(train_counts)) if train_counts else 1.0
    tiny_side = max(1, image_size // 2)
    tiny = sorted(p for p, f in usable.items() if min(f["size"]) < tiny_side)
    gray_by_class: dict[str, list[bool]] = defaultdict(list)
    for path, f in usable.items():
        gray_by_class[index.classes[label_of[path]]].append(bool(f["gray"]))
    leaked_val = sorted({b for _, b in exact["across"]})
    return {
        "images": {"train": len(index.train), "val": len(index.val)},
        "class_counts": counts,
        "imbalance_train": round(imbalance, 3),
        "exact_duplicates": {
            "within_train": _summary(exact["train"]),
            "within_val": _summary(exact["val"]),
            "across_train_val": _summary(exact["across"]),
        },
        "near_duplicates": {
            "max_differing_bits": NEAR_BITS,
            "within_train": _summary(near["train"]),
            "within_val": _summary(near["val"]),
            "across_train_val": _summary(near["across"]),
        },
        "leaked_val_images": leaked_val,
        "copies_with_different_classes": _summary(conflicting),
        "tiny_images": {"shorter_side_below": tiny_side, "count": len(tiny), "examples": tiny[:EXAMPLES]},
        "grayscale_only_classes": sorted(c for c, flags in gray_by_class.items() if flags and all(flags)),
    }


def console_summary(report: dict[str, Any], on_leakage: str) -> str:
    """One line: what needs attention, or that nothing does."""
    exact, near = report["exact_duplicates"], report["near_duplicates"]
    parts = []
    leaked = len(report["leaked_val_images"])
    if leaked or near["across_train_val"]["pairs"]:
        parts.append(
            f"LEAKAGE: {leaked} val image(s) are exact copies of train images "
            f"(dataset.on_leakage={on_leakage}), "
            f"{near['across_train_val']['pairs']} near-copy pair(s) across train/val"
        )
    within = sum(d[k]["pairs"] for d in (exact, near) for k in ("within_train", "within_val"))
    if within:
        parts.append(f"{within} duplicate pair(s) within a split")
    if report["copies_with_different_classes"]["pairs"]:
        parts.append(
            f"{report['copies_with_different_classes']['pairs']} copy pair(s) filed under two classes"
        )
    if report["imbalance_train"] >= 2:
        parts.append(f"class imbalance {report['imbalance_train']:.1f}x (train)")
    if report["tiny_images"]["count"]:
        tiny = report["tiny_images"]
        parts.append(f"{tiny['count']} image(s) under {tiny['shorter_side_below']} px")
    if report["grayscale_only_classes"]:
        parts.append(f"grayscale-only classes: {', '.join(report['grayscale_only_classes'])}")
    return "; ".join(parts) if parts else "no duplicates, no leakage, balanced classes, no tiny images"


def audit_dataset(index: DatasetIndex, image_size: int, on_leakage: str = "warn") -> dict[str, Any]:
    """Audit `index`, log a one-line summary, and apply `on_leakage` (warn | error | drop) to exact copies."""
    facts = scan_files([p for p, _ in index.train + index.val])
    report = audit_index(index, facts, image_size)
    summary = console_summary(report, on_leakage)
    leaked = report["leaked_val_images"]
    examples = report["exact_duplicates"]["across_train_val"]["examples"]
    if leaked and on_leakage == "error":
        raise LeakageError(
            f"{len(leaked)} val image(s) are exact copies of train images, e.g. {examples[:2]}. "
            "Remove them, or set dataset.on_leakage=drop (drops the val copies) or warn"
        )
    if leaked and on_leakage == "drop":
        dropped = set(leaked)
        index.val = [s for s in index.val if s[0] not in dropped]
        require_every_class(index, "after dropping val copies of train images")
        report["dropped_val_images"] = len(dropped)
        summary += f"; dropped {len(dropped)} val copies"
    noisy = leaked or report["near_duplicates"]["across_train_val"]["pairs"]
    log.log(logging.WARNING if noisy else logging.INFO, "Audit: %s", summary)
    report["summary"] = summary
    return report
