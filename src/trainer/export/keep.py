"""A re-export replaces only the formats it makes: the previous export's other artifacts are carried over.

The README's pair of commands (`[coreml,onnx]` for iOS, then `[litert,executorch]` for Android) must end with
all four formats in one folder. Kept entries still hold only when they come from the same checkpoint (its
sha256 is in every manifest entry): artifacts of another checkpoint are refused unless
`export.keep_other_checkpoints=true`, and never kept when the classes differ (labels.txt is shared). An export
that does not know its checkpoint (export_all called directly) keeps nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from trainer.export.manifest import MANIFEST_NAME
from trainer.utils.files import sha256_file

log = logging.getLogger(__name__)


def checkpoint_identity(path: Path | str) -> dict[str, str]:
    """What manifest entries name their checkpoint by: its resolved path and the sha256 of its bytes."""
    path = Path(path).resolve()
    return {"path": str(path), "sha256": sha256_file(path)}


def _previous_manifest(previous: Path) -> dict[str, Any] | None:
    try:
        return json.loads((previous / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def artifacts_to_keep(
    previous: Path,
    formats: list[str],
    classes: list[str],
    checkpoint: dict[str, str] | None,
    allow_other_checkpoints: bool,
) -> list[dict[str, Any]]:
    """The previous export's entries of formats not made now (their files present), checked as above.

    Raises ValueError, before anything is converted, when they come from another checkpoint and mixing was
    not asked for.
    """
    old = _previous_manifest(previous)
    if checkpoint is None or old is None:
        return []
    kept = [
        a
        for a in old.get("artifacts", [])
        if a.get("format") not in formats and (previous / a.get("path", "")).exists()
    ]
    if not kept:
        return []
    names = ", ".join(sorted({a["name"] for a in kept}))
    if list(old.get("classes", [])) != list(classes):
        log.warning("Not keeping %s from %s: they were trained on other classes", names, previous)
        return []
    others = {a.get("checkpoint", "unknown") for a in kept} - {checkpoint["sha256"]}
    if others and not allow_other_checkpoints:
        raise ValueError(
            f"{previous} holds {names} exported from another checkpoint than {checkpoint['path']}: add their "
            "formats to export.formats to re-export them, set export.keep_other_checkpoints=true to keep "
            "them anyway, or choose another out_dir"
        )
    log.info("Keeping %s from the previous export in %s", names, previous)
    return kept


def copy_kept(previous: Path, work: Path, kept: list[dict[str, Any]]) -> None:
    """Copy the kept artifacts (files or .mlpackage folders) into the export being built."""
    for entry in kept:
        source, target = previous / entry["path"], work / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target)
