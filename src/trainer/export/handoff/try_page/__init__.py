"""try.html: a page in the export that runs the shipped ONNX model in the browser (ONNX Runtime Web) on
photos the user picks, drops or takes, with the evaluated preprocessing and the "not sure" threshold.

Browsers refuse fetch() from file:// pages, so it is opened through a local server:
`python -m http.server -d <export folder>` then http://127.0.0.1:8000/try.html.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from trainer.export.handoff.try_page.runtime import copy_runtime, missing_reason

PAGE_NAME = "try.html"
RUNTIME_FOLDER = "try_runtime"


def _page_config(manifest: dict[str, Any]) -> dict[str, Any]:
    meta = manifest.get("metadata", {})
    models = [
        {"path": a["path"], "precision": a["precision"]}
        for a in manifest["artifacts"]
        if a.get("format") == "onnx" and a.get("kind", "classifier") == "classifier"
    ]
    t95, prep = meta.get("not_sure_below_95"), manifest["preprocess"]
    return {
        "classes": manifest["classes"],
        "preprocess": manifest["preprocess"],
        "describe": f"resize {prep['resize']} px ({prep['interpolation']}), centre crop {prep['size']} px, "
        "normalize",
        "models": models,
        "temperature": meta.get("temperature", 1.0),
        "temperature_in_model": bool(meta.get("temperature_in_model", True)),
        "threshold": round(t95, 3) if t95 is not None else 0.5,
        "threshold_note": "95% precision on val" if t95 is not None else "none reaches 95% precision on val",
        "runtime": RUNTIME_FOLDER,
    }


def write_try_page(out_dir: Path, manifest: dict[str, Any]) -> tuple[str | None, str | None]:
    """Write try.html and its runtime into `out_dir`; returns (the page's name, None) or (None, the reason
    it was not written)."""
    config = _page_config(manifest)
    if not config["models"]:
        return None, "no ONNX classifier was exported"
    reason = missing_reason()
    if reason:
        return None, reason
    copy_runtime(out_dir / RUNTIME_FOLDER)
    folder = resources.files(__name__)
    page = (
        folder.joinpath("try.html")
        .read_text()
        .replace("__CONFIG__", json.dumps(config).replace("</", "<\\/"))
        .replace("__RUNTIME__", RUNTIME_FOLDER)
        .replace("__PREPROCESS__", folder.joinpath("preprocess.js").read_text())
    )
    (out_dir / PAGE_NAME).write_text(page)
    return PAGE_NAME, None
