"""The end-of-run summary: what was trained, how well, how fast, and every artifact with its check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.console.table import text_table
from trainer.export.handoff.names import CARD_NAME
from trainer.reports.run_report.page import REPORT_NAME
from trainer.reports.table import runtime_key

MAX_CLASSES_SHOWN = 8
MAX_ERROR_CHARS = 70
ARTIFACT_HEADERS = ["artifact", "precision", "size", "val top-1", "agreement", "latency", "check"]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _size(size_bytes: int | None) -> str:
    if size_bytes is None:
        return "-"
    return f"{size_bytes / 1e6:.1f} MB" if size_bytes >= 1e5 else f"{size_bytes / 1e3:.0f} kB"


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _names(entry: dict[str, Any]) -> set[str]:
    """What an export error may call this artifact: its file, `<format>_<precision>`, or its format alone."""
    return {entry.get("name"), runtime_key(entry), entry.get("format")}


def artifact_table(manifest: dict[str, Any]) -> list[str]:
    """The manifest's artifacts (whatever formats it lists), then failed and skipped ones, then footnotes."""
    errors = list(manifest.get("errors") or [])
    rows, notes = [], {}
    for entry in manifest.get("artifacts") or []:
        own = [e for e in errors if str(e.get("artifact", "")).removesuffix(" conversion") in _names(entry)]
        errors = [e for e in errors if e not in own]
        gate = entry.get("agreement_gate") or {"passed": True}
        if own:
            check = "FAILED: " + _short(own[0].get("error", ""))
        elif not gate["passed"]:
            check = f"FAILED agreement gate: {_percent(1 - gate['value'])} of answers differ"
        elif entry.get("reason"):
            check = "passed, not run here *"
            notes.setdefault(entry["reason"], []).append(entry.get("name"))
        else:
            check = "passed"
        latency = entry.get("latency_ms")
        rows.append(
            [
                entry.get("name", "?"),
                entry.get("precision", "?"),
                _size(entry.get("size_bytes")),
                _percent(entry.get("val_top1")),
                _percent(entry.get("top1_agreement")),
                "-" if latency is None else f"{latency:.1f} ms",
                check,
            ]
        )
    rows += [
        [e.get("artifact", "?"), "", "", "", "", "", "FAILED: " + _short(e.get("error", ""))] for e in errors
    ]
    rows += [
        [s.get("name", "?"), "", "", "", "", "", "skipped: " + _short(s.get("reason", ""))]
        for s in manifest.get("skipped") or []
    ]
    lines = text_table(ARTIFACT_HEADERS, rows)
    lines += [f"  * {reason}" for reason in notes]
    lines += [f"  warning: {warning}" for warning in manifest.get("warnings") or []]
    return lines


def run_summary(
    metrics: dict[str, Any],
    run_dir: Path,
    export_dir: Path | None = None,
    manifest: dict[str, Any] | None = None,
) -> str:
    """The summary printed when a run ends (no `manifest`: export disabled)."""
    classes = metrics.get("classes") or []
    shown = ", ".join(classes[:MAX_CLASSES_SHOWN]) + (", …" if len(classes) > MAX_CLASSES_SHOWN else "")
    alpha = metrics.get("alpha")
    lines = [
        "Summary",
        f"  dataset    {metrics.get('dataset')}: {metrics.get('num_classes')} classes ({shown}), "
        f"{metrics.get('train_images')} train / {metrics.get('val_images')} val images",
        f"  backbone   {metrics.get('model')}"
        + ("" if alpha is None else f", α={alpha}")
        + f", {metrics.get('image_size')} px, {metrics.get('params', 0) / 1e6:.2f} M params, "
        f"{metrics.get('macs', 0) / 1e6:.1f} MMACs",
        f"  val        top-1 {_percent(metrics.get('val_top1'))}, top-3 {_percent(metrics.get('val_top3'))} "
        f"(best epoch {metrics.get('best_epoch', '?')} of {metrics.get('epochs')})",
    ]
    speed = metrics.get("train_images_per_sec")
    lines.append(
        f"  training   {metrics.get('train_seconds') or 0:.0f} s, "
        + ("-" if speed is None else f"{speed:.0f} images/s")
    )
    if manifest is not None:
        lines += ["  artifacts", *("  " + line for line in artifact_table(manifest))]
    lines.append(f"  run folder {run_dir}")
    if manifest is not None and export_dir is not None and CARD_NAME in (manifest.get("handoff") or []):
        lines.append(f"  model card {export_dir / CARD_NAME}")
    if (run_dir / REPORT_NAME).is_file():
        lines.append(f"  run report {run_dir / REPORT_NAME} (open in a browser)")
    return "\n".join(lines)
