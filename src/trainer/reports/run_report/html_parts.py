"""Small HTML builders for report.html: escaped text, tables, thumbnails, inline SVG charts. Every piece of
user text (class names, file names) goes through `esc`."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageOps

THUMB_PX = 96  # longer side of a thumbnail: a few kB of JPEG each keeps the page small


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], raw: bool = False) -> str:
    """A table of escaped cells (`raw`: the cells are already HTML)."""
    cell = (lambda v: str(v)) if raw else esc
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


@lru_cache(maxsize=4096)
def thumbnail(path: str) -> str:
    """An <img> of `path`, upright and downscaled, as an inline base64 JPEG (a grey box if unreadable)."""
    try:
        with Image.open(path) as img:
            small = ImageOps.exif_transpose(img)
            small.draft("RGB", (THUMB_PX * 2, THUMB_PX * 2))
            small = small.convert("RGB")
            small.thumbnail((THUMB_PX, THUMB_PX))
            buffer = io.BytesIO()
            small.save(buffer, "JPEG", quality=70)
    except (OSError, ValueError):
        return f'<span class="missing" title="{esc(path)}">unreadable</span>'
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img src="data:image/jpeg;base64,{data}" alt="{esc(Path(path).name)}" title="{esc(path)}">'


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, width: int = 360) -> str:
    """An inline SVG of one or more (x, y) series on shared axes, with a legend."""
    points = [p for values in series.values() for p in values]
    if not points:
        return ""
    height, pad = 200, 30
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    sx = (width - 2 * pad) / ((x1 - x0) or 1)
    sy = (height - 2 * pad) / ((y1 - y0) or 1)
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    lines, legend = [], []
    for i, (name, values) in enumerate(series.items()):
        colour = colours[i % len(colours)]
        coords = " ".join(f"{pad + (x - x0) * sx:.1f},{height - pad - (y - y0) * sy:.1f}" for x, y in values)
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        legend.append(f'<text x="{pad + 110 * i}" y="14" fill="{colour}" font-size="11">{esc(name)}</text>')
    axes = (
        f'<text x="2" y="{pad}" font-size="10">{y1:.3g}</text>'
        f'<text x="2" y="{height - pad}" font-size="10">{y0:.3g}</text>'
        f'<text x="{pad}" y="{height - 8}" font-size="10">epoch {x0:g}</text>'
        f'<text x="{width - pad - 40}" y="{height - 8}" font-size="10">{x1:g}</text>'
    )
    return (
        f'<figure><svg width="{width}" height="{height}" role="img" aria-label="{esc(title)}">'
        f"{''.join(legend)}{axes}{''.join(lines)}</svg><figcaption>{esc(title)}</figcaption></figure>"
    )


def reliability_chart(bins: list[dict], title: str, size: int = 220) -> str:
    """Bars of each confidence bin's accuracy against the diagonal a calibrated model would follow."""
    pad = 24
    span = size - 2 * pad
    bars = []
    for b in bins:
        x, w = pad + b["low"] * span, (b["high"] - b["low"]) * span
        h = b["accuracy"] * span
        bars.append(
            f'<rect x="{x:.1f}" y="{size - pad - h:.1f}" width="{w - 1:.1f}" height="{h:.1f}" fill="#4c72b0">'
            f"<title>{b['count']} photos, confidence {b['confidence']:.2f}, accuracy {b['accuracy']:.2f}"
            "</title></rect>"
        )
    end = size - pad
    diagonal = f'<line x1="{pad}" y1="{end}" x2="{end}" y2="{pad}" stroke="#999" stroke-dasharray="4"/>'
    return (
        f'<figure><svg width="{size}" height="{size}" role="img" aria-label="{esc(title)}">{"".join(bars)}'
        f'{diagonal}<text x="{pad}" y="{size - 6}" font-size="10">confidence 0 to 1</text></svg>'
        f"<figcaption>{esc(title)}</figcaption></figure>"
    )
