"""The sections of report.html, each a function from the run's figures to an HTML string."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from trainer.reports.run_report.calibration import probabilities
from trainer.reports.run_report.html_parts import (
    esc,
    line_chart,
    pct,
    reliability_chart,
    table,
    thumbnail,
)
from trainer.reports.run_report.val_outputs import ValOutputs

MAX_MISTAKES = 400  # wrong photos on the page in all, whatever the per-class setting: the page stays small
MAX_MATRIX_CLASSES = 30  # larger confusion matrices are linked as the PNG, not drawn in HTML
CONFUSED_PAIRS, PAIR_EXAMPLES = 10, 4


def _photo(path: str, caption: str, true_class: int | None = None) -> str:
    data = f' data-true="{true_class}"' if true_class is not None else ""
    return f'<div class="photo"{data}>{thumbnail(path)}<div>{caption}</div></div>'


def confidence_section(calibration: dict[str, Any]) -> str:
    before, after = calibration["before"], calibration["after"]
    coverage = table(
        ["threshold t", "share of val photos answered", "accuracy on those"],
        [(f"{r['threshold']:.2f}", pct(r["answered"]), pct(r["accuracy"])) for r in calibration["coverage"]],
    )
    thresholds = ", ".join(
        f"{float(p):.0%} precision: t = {'none reaches it' if t is None else f'{t:.3f}'}"
        for p, t in calibration["not_sure_thresholds"].items()
    )
    return (
        "<h2>Confidence</h2>"
        f"<p>Temperature T = {calibration['temperature']:.3f}, fitted on the "
        f"{esc(calibration['fitted_on'])}; "
        f"{'folded into every exported model' if calibration.get('in_model') else 'applied by the app'}. "
        f"Expected calibration error on val: <b>{before['ece']:.4f}</b> before, <b>{after['ece']:.4f}</b> "
        "after (measured on the same photos T was fitted on).</p>"
        f'<div class="row">{reliability_chart(before["bins"], "before temperature")}'
        f"{reliability_chart(after['bins'], 'after temperature')}</div>"
        f'<p>"Not sure" rule (answer only when the top probability is at least t): {esc(thresholds)}.</p>'
        f"{coverage}"
    )


def mistakes_section(outputs: ValOutputs, classes: list[str], per_class: int) -> str:
    """Wrong val photos, highest loss first, at most `per_class` per true class, filterable by class."""
    probs = probabilities(outputs.logits, outputs.calibration["temperature"])
    labels = outputs.labels
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    loss = -np.log(np.maximum(probs[wrong, labels[wrong]], 1e-12))
    shown, counts = [], defaultdict(int)
    for i in wrong[np.argsort(-loss, kind="stable")]:
        if counts[labels[i]] < per_class and len(shown) < MAX_MISTAKES:
            counts[labels[i]] += 1
            shown.append(i)
    cards = []
    for i in shown:
        top3 = np.argsort(-probs[i])[:3]
        lines = "<br>".join(f"{esc(classes[k])} {probs[i, k]:.1%}" for k in top3)
        caption = f"<b>true: {esc(classes[labels[i]])}</b><br>said: {esc(classes[top3[0]])}<br>{lines}"
        cards.append(_photo(outputs.paths[i], caption, int(labels[i])))
    options = "".join(
        f'<option value="{k}">{esc(name)}</option>' for k, name in enumerate(classes) if counts[k]
    )
    return (
        f"<h2>Val photos it gets wrong ({len(wrong)} of {len(labels)})</h2>"
        f"<p>Worst first (highest loss); at most {per_class} per true class shown.</p>"
        f'<label>true class <select id="class-filter"><option value="">all</option>{options}</select></label>'
        f'<div class="photos" id="mistakes">{"".join(cards)}</div>'
    )


def confusion_sections(outputs: ValOutputs, classes: list[str], matrix_png: str | None) -> str:
    """Per-class precision/recall, the most confused pairs with examples, and the confusion matrix."""
    k = len(classes)
    predicted = outputs.logits.argmax(1) if len(outputs.labels) else np.zeros(0, np.int64)
    matrix = np.zeros((k, k), np.int64)
    np.add.at(matrix, (outputs.labels, predicted), 1)
    diag = np.diag(matrix)
    rows = []
    for c in range(k):
        precision = diag[c] / matrix[:, c].sum() if matrix[:, c].sum() else None
        recall = diag[c] / matrix[c].sum() if matrix[c].sum() else None
        rows.append((classes[c], int(matrix[c].sum()), pct(precision), pct(recall)))
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    pairs = [divmod(int(i), k) for i in np.argsort(-off, axis=None, kind="stable")[:CONFUSED_PAIRS]]
    pair_html = []
    for true, said in pairs:
        if not off[true, said]:
            break
        examples = np.flatnonzero((outputs.labels == true) & (predicted == said))[:PAIR_EXAMPLES]
        photos = "".join(_photo(outputs.paths[i], esc(Path(outputs.paths[i]).name)) for i in examples)
        pair_html.append(
            f"<h3>{esc(classes[true])} taken for {esc(classes[said])}: {off[true, said]} photo(s)</h3>"
            f'<div class="photos">{photos}</div>'
        )
    if k <= MAX_MATRIX_CLASSES:
        cells = [[esc(classes[r]), *[str(v) for v in matrix[r]]] for r in range(k)]
        matrix_html = table(["true \\ said", *classes], cells, raw=True)
    else:
        link = f' <a href="{esc(matrix_png)}">confusion_matrix.png</a>' if matrix_png else ""
        matrix_html = f"<p>{k} classes: too many to draw here; see the most confused pairs above.{link}</p>"
    return (
        "<h2>Most confused pairs</h2>"
        + ("".join(pair_html) or "<p>none: every val photo is right</p>")
        + "<h2>Per class</h2>"
        + table(["class", "val photos", "precision", "recall"], rows)
        + "<h2>Confusion matrix</h2>"
        + matrix_html
    )


def curves_section(csv_path: Path) -> str:
    """Per-epoch loss and top-1 from Lightning's csv/metrics.csv (each column's last value in an epoch)."""
    if not csv_path.is_file():
        return "<h2>Training curves</h2><p>no csv/metrics.csv (logger other than csv)</p>"
    by_epoch: dict[str, dict[float, float]] = defaultdict(dict)
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            for key, value in row.items():
                if value and key.split("/")[-1] in ("loss_epoch", "loss", "top1"):
                    by_epoch[key][float(row["epoch"])] = float(value)
    series = {k: sorted(v.items()) for k, v in by_epoch.items()}
    loss = {k: v for k, v in series.items() if "loss" in k}
    top1 = {k: v for k, v in series.items() if k.endswith("top1")}
    charts = line_chart(loss, "loss") + line_chart(top1, "top-1")
    return f'<h2>Training curves</h2><div class="row">{charts}</div>'


def audit_section(audit: dict[str, Any] | None) -> str:
    """The dataset audit's findings, with the photos: copies across train/val, within a split, tiny ones."""
    if not audit:
        return ""
    parts = [f"<h2>Dataset audit</h2><p>{esc(audit.get('summary', ''))}</p>"]
    for kind in ("exact_duplicates", "near_duplicates"):
        for split, found in audit.get(kind, {}).items():
            if isinstance(found, dict) and found.get("pairs"):
                photos = "".join(
                    _photo(a, esc(Path(a).name)) + _photo(b, esc(Path(b).name)) for a, b in found["examples"]
                )
                title = f"{kind.replace('_', ' ')}, {split.replace('_', ' ')}: {found['pairs']} pair(s)"
                parts.append(f'<h3>{esc(title)}</h3><div class="photos">{photos}</div>')
    tiny = audit.get("tiny_images", {})
    if tiny.get("count"):
        photos = "".join(_photo(p, esc(Path(p).name)) for p in tiny["examples"])
        parts.append(
            f"<h3>{tiny['count']} image(s) under {tiny['shorter_side_below']} px</h3>"
            f'<div class="photos">{photos}</div>'
        )
    return "".join(parts)


def artifacts_section(manifest: dict[str, Any] | None, classes: list[str]) -> str:
    """The manifest's artifacts, and for each quantized copy the photos whose answer it changed."""
    if not manifest:
        return "<h2>Artifacts</h2><p>export disabled</p>"
    rows = [
        (a["name"], a.get("format"), a.get("precision"), f"{a.get('size_bytes', 0) / 1e6:.2f} MB",
         pct(a.get("val_top1")), pct(a.get("top1_agreement")), a.get("latency_ms", "n/a"))
        for a in manifest["artifacts"]
    ]  # fmt: skip
    parts = [
        "<h2>Artifacts</h2>",
        table(["artifact", "format", "precision", "size", "val top-1", "agrees with PyTorch", "ms"], rows),
    ]
    for a in manifest["artifacts"]:
        changed = a.get("answers_changed_vs_fp32")
        if changed is None:
            continue
        photos = "".join(
            _photo(c["image"], f"true {esc(classes[c['label']])}<br>fp32: {esc(classes[c['fp32']])}<br>"
                   f"this: {esc(classes[c['this']])}")
            for c in changed if c.get("image")
        )  # fmt: skip
        parts.append(
            f"<h3>{esc(a['name'])}: {len(changed)} photo(s) answered differently from fp32</h3>"
            f'<div class="photos">{photos}</div>'
        )
    return "".join(parts)
