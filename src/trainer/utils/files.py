"""Files that are either complete or absent, and SHA-256 of files.

Everything trainer publishes (checkpoints, metrics.json, caches, export artifacts) is written under a hidden
temporary name beside its final path and renamed into place only once complete: an interrupted or crashed
run never leaves a half-written file under a name that looks finished, and readers never see one.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"  # temporary names start with this (hidden, and easy to clean up)
_BLOCK = 1 << 20


ZIP_SLACK_BYTES = 64 << 20  # what an archive's entries may add up to beyond its own size


def check_zip_sizes(path: Path) -> None:
    """Raise ValueError when the zip at `path` (torch.save's format) declares more uncompressed bytes than
    it could hold: torch stores entries uncompressed, so a legitimate file never does. Checked before
    torch.load, which allocates each entry's declared size: a 3 MB file declaring a 3 GB data.pkl is
    refused in milliseconds instead of costing 7 GB of memory. A file that is not a zip is left to torch."""
    if not zipfile.is_zipfile(path):
        return
    limit = path.stat().st_size + ZIP_SLACK_BYTES
    with zipfile.ZipFile(path) as archive:
        entries = archive.infolist()
    declared = sum(e.file_size for e in entries)
    if declared > limit:
        biggest = max(entries, key=lambda e: e.file_size)
        raise ValueError(
            f"declares {declared / 2**20:.0f} MiB uncompressed in {path.stat().st_size / 2**20:.1f} MiB "
            f"({biggest.filename}: {biggest.file_size / 2**20:.0f} MiB), more than a checkpoint can hold"
        )


def remove(path: Path) -> None:
    """Delete a file or a whole folder, whichever `path` is; nothing there is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def tree_files(path: Path) -> list[Path]:
    """The regular files of a file or folder, sorted by relative path (a file is its own single member)."""
    if path.is_file():
        return [path]
    return sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())


def _fsync(path: Path) -> None:
    """Flush the bytes to disk so the rename never publishes data still in the page cache."""
    for file in tree_files(path):
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def swap_in(new: Path, final: Path, aside: Path) -> None:
    """Put `new` where `final` is: os.replace cannot replace a non-empty folder, so `final` moves to `aside`
    first and is removed once `new` is in place."""
    os.replace(final, aside)
    os.replace(new, final)
    remove(aside)


@contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final` (same suffix); publish it as `final` only if the block succeeds.

    The writer may create a file or a directory (an .mlpackage) there. On any exception, KeyboardInterrupt
    included, the temporary is removed and `final` keeps its previous state. Replacing a directory needs a
    rename-aside (os.replace cannot overwrite a non-empty one); the old copy is deleted afterwards.
    """
    final = Path(final)
    tmp = final.with_name(f"{TMP_PREFIX}{secrets.token_hex(4)}-{final.name}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"the writer produced nothing at {tmp}")
        _fsync(tmp)
        if final.is_dir() and not final.is_symlink():
            swap_in(tmp, final, final.with_name(f"{TMP_PREFIX}{secrets.token_hex(4)}-old-{final.name}"))
        else:
            os.replace(tmp, final)
    except BaseException:
        remove(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    """Atomically write a UTF-8 text file."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: Any, *, indent: int | None = 2) -> None:
    """Atomically write `data` as JSON (UTF-8, non-ASCII kept as is)."""
    write_text(path, json.dumps(data, indent=indent, ensure_ascii=False))


def hash_file(digest: Any, path: Path) -> None:
    """Feed a file's bytes into `digest` (any hashlib object) block by block, never the whole file at once."""
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    hash_file(digest, Path(path))
    return digest.hexdigest()
