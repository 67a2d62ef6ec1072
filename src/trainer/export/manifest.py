"""The export folder swapped in whole, artifact hashing and manifest.json with its typed artifact entries.

A whole export is built in a hidden folder beside the export folder and swapped in when complete
(`staged_folder`); inside it every file or folder goes through `trainer.utils.files.atomic_output`, so an
interrupted export never leaves a half-written artifact under a name that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from trainer.utils.files import TMP_PREFIX, hash_file, remove, sha256_file, swap_in, tree_files, write_text

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
LOCK_WAIT_S = 10.0  # how long a second export into the same folder waits for the first


class ExportBusyError(RuntimeError):
    """Another export holds the folder's lock."""


@contextmanager
def record_errors(errors: list[dict[str, str]], key: str, name: str) -> Iterator[None]:
    """Log an exception from the block and list it in `errors` as {key: name, "error": ...}.

    One failing format or runtime must not cost the others: the caller goes on and reports them all.
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - any converter or runtime failure is recorded, not raised
        log.error("%s %s failed: %s: %s", key, name, type(exc).__name__, exc, exc_info=True)
        errors.append({key: name, "error": f"{type(exc).__name__}: {exc}"})


def size_bytes(path: Path) -> int:
    """Bytes on disk: the file's size, or the total over a directory's files (an .mlpackage)."""
    return sum(f.stat().st_size for f in tree_files(path))


def sha256(path: Path) -> str:
    """SHA-256 of a file, or of a directory as its sorted relative paths each followed by its content.

    Names and contents are length-prefixed, so moving bytes between a name and a file changes the hash.
    """
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in tree_files(path):
        name = file.relative_to(path).as_posix().encode()
        digest.update(len(name).to_bytes(8, "big") + name + file.stat().st_size.to_bytes(8, "big"))
        hash_file(digest, file)
    return digest.hexdigest()


@dataclass
class ArtifactEntry:
    """One artifact of manifest.json, one meaning per field: the schema the converters' entries are written
    through and the model card reads. Figures only one format records (its runtime, weight sizes, Core ML's
    tie-aware agreement, ...) stay in `figures`, written beside the fields."""

    name: str
    format: str  # the manifest format of its suffix (formats.py): torchscript, onnx, coreml, litert, ...
    precision: str
    kind: str  # classifier, embedding or updatable
    path: str  # relative to the export folder
    size_bytes: int
    sha256: str
    val_top1: float | None = None  # its own top-1 on the val images
    top1_agreement: float | None = None  # share of val images where it picks PyTorch's top-1 class
    latency_ms: float | None = None  # median batch-1 CPU latency (None where its runtime cannot run here)
    reason: str | None = None  # why a figure is missing
    top1_drop_vs_pytorch: float | None = None  # points of val top-1 lost against the fp32 PyTorch model
    top1_images_lost_gained_vs_pytorch: list[int] | None = None  # the images behind that drop
    top1_drop_p_value_vs_pytorch: float | None = None  # its one-sided sign test
    top1_drop_vs_fp32: float | None = None  # points lost against the same format's fp32 artifact
    top1_agreement_vs_fp32: float | None = None  # top-1 agreement with that fp32 artifact
    top1_images_lost_gained: list[int] | None = None  # the images behind top1_drop_vs_fp32
    top1_drop_p_value: float | None = None  # its one-sided sign test
    gate: dict[str, Any] | None = None  # the accuracy gate that ran: rule, value, passed, p_value, on_failure
    agreement_gate: dict[str, Any] | None = None  # a smaller copy's top1_agreement >= export.min_agreement
    figures: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> ArtifactEntry:
        """An entry as the converters build it or manifest.json holds it."""
        names = {f.name for f in fields(cls)} - {"figures"}
        figures = {k: v for k, v in entry.items() if k not in names}
        return cls(**{k: v for k, v in entry.items() if k in names}, figures=figures)

    def to_dict(self) -> dict[str, Any]:
        """The manifest.json form: every field (null where not measured), then the format's own figures."""
        typed = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "figures"}
        return {**typed, **self.figures}


def artifact_entry(path: Path, out_dir: Path, *, format: str, precision: str, kind: str) -> dict[str, Any]:
    """The manifest fields every artifact has; verification adds its figures to the returned dict."""
    return {
        "name": path.name,
        "format": format,
        "precision": precision,
        "kind": kind,
        "path": path.relative_to(out_dir).as_posix(),
        "size_bytes": size_bytes(path),
        "sha256": sha256(path),
    }


def _check_replaceable(final: Path) -> None:
    """Refuse to replace anything but an earlier export (or an empty folder): the swap deletes the old one."""
    if final.exists() and not final.is_dir():
        raise ValueError(f"export folder {final} exists and is not a folder: choose another out_dir")
    if final.is_dir() and not (final / MANIFEST_NAME).is_file() and any(final.iterdir()):
        raise ValueError(
            f"export folder {final} holds files but no {MANIFEST_NAME}, so it is not an earlier export and "
            "replacing it would delete them: choose a new or empty out_dir"
        )


@contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """Yield a new hidden folder beside `final` to build a whole export in; it becomes `final` only once the
    block completes.

    On any exception (KeyboardInterrupt included) the new folder is deleted and `final` keeps the previous
    export, whole: nothing is lost before its replacement exists, and nothing from before can pass for part of
    the new export. A run killed between the two renames of the swap leaves the previous export aside under a
    hidden name; the next export puts it back before starting.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with export_lock(final):
        yield from _staged(final)


@contextmanager
def export_lock(final: Path) -> Iterator[None]:
    """One export at a time per folder: a second one waits `LOCK_WAIT_S`, then stops with one line. Only the
    holder cleans leftovers, so a live export's staging folder is never deleted by another."""
    lock = FileLock(final.with_name(f".{final.name}.lock"))
    try:
        lock.acquire(timeout=LOCK_WAIT_S)
    except Timeout:
        raise ExportBusyError(
            f"another export is writing {final} (lock {lock.lock_file}): wait for it to finish, or choose "
            "another out_dir"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _staged(final: Path) -> Iterator[Path]:
    stem = f".{final.name}{TMP_PREFIX}"
    for leftover in sorted(final.parent.glob(f"{stem}*")):
        if leftover.name.startswith(f"{stem}old-") and not final.exists():
            os.replace(leftover, final)
        else:
            remove(leftover)
    _check_replaceable(final)
    token = secrets.token_hex(4)
    work = final.with_name(f"{stem}{token}")
    work.mkdir()
    try:
        yield work
        if final.exists() or final.is_symlink():
            swap_in(work, final, final.with_name(f"{stem}old-{token}"))
        else:
            os.replace(work, final)
    except BaseException:
        remove(work)
        raise


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    """Atomically write manifest.json (the file reports and trainer-predict read)."""
    path = out_dir / MANIFEST_NAME
    write_text(path, json.dumps(manifest, indent=2, default=str) + "\n")  # str(): numpy scalars in metadata
    return path


def failure_message(manifest: dict[str, Any], path: Path) -> str:
    """One line naming what failed to export (the errors themselves are in the log and `path`)."""
    names = ", ".join(dict.fromkeys(error["artifact"] for error in manifest["errors"]))
    return f"export failed for {names} (see {path})"
