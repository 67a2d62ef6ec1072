"""report.html: one offline page per run (thumbnails inline), written beside metrics.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from trainer.reports.run_report.html_parts import esc, pct
from trainer.reports.run_report.sections import (
    artifacts_section,
    audit_section,
    confidence_section,
    confusion_sections,
    curves_section,
    mistakes_section,
)
from trainer.reports.run_report.val_outputs import ValOutputs
from trainer.utils.files import write_text

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
MISTAKES_PER_CLASS = 12  # default of the `report_mistakes_per_class` setting

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}
.photos{display:flex;flex-wrap:wrap;gap:8px}.photo{width:130px;font-size:11px}.photo img{max-width:96px}
.row{display:flex;gap:2em;flex-wrap:wrap}figure{margin:0}
"""
FILTER = """
document.getElementById('class-filter')?.addEventListener('change', (event) => {
  for (const photo of document.querySelectorAll('#mistakes .photo')) {
    photo.hidden = event.target.value !== '' && photo.dataset.true !== event.target.value;
  }
});
"""


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_run_report(
    run_dir: Path,
    metrics: dict[str, Any],
    classes: list[str],
    outputs: ValOutputs,
    manifest: dict[str, Any] | None,
    mistakes_per_class: int = MISTAKES_PER_CLASS,
) -> Path:
    """Write run_dir/report.html from the run's figures and files; returns its path."""
    title = f"{metrics.get('dataset')} / {metrics.get('model')} at {metrics.get('image_size')} px"
    matrix = "confusion_matrix.png" if (run_dir / "confusion_matrix.png").is_file() else None
    body = [
        f"<h1>{esc(title)}</h1>",
        f"<p>val top-1 <b>{pct(metrics.get('val_top1'))}</b> on {len(outputs.labels)} photos, "
        f"{len(classes)} classes, best epoch {esc(metrics.get('best_epoch'))}.</p>",
        confidence_section(outputs.calibration),
        mistakes_section(outputs, classes, mistakes_per_class),
        confusion_sections(outputs, classes, matrix),
        curves_section(run_dir / "csv" / "metrics.csv"),
        audit_section(_read_json(run_dir / "audit.json")),
        artifacts_section(manifest, classes),
    ]
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(body)}<script>{FILTER}</script></body></html>"
    )
    path = run_dir / REPORT_NAME
    write_text(path, page)
    log.debug("Run report: %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path
