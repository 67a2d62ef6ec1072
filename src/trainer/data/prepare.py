"""Put a named dataset on disk: obtain its archives, verify them, unpack them, publish the folder.

The one mechanism every named dataset uses. Archives come from a download (trainer.data.fetch), a copy the
user put in `root`, or a local path in `dataset.url`, and are checked against a pinned sha256 before anything
trusts them. They are unpacked (trainer.data.archives) into a hidden folder that is renamed into place only
when complete, under a file lock, so an interrupted or concurrent run never leaves a half dataset that a
later run would mistake for a whole one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from filelock import FileLock, Timeout

from trainer.data.archives import extract_archive
from trainer.data.fetch import ChecksumError, DownloadError, download_file, verify_sha256

log = logging.getLogger(__name__)

MARKER = ".trainer-complete"  # written into a dataset folder as the last step of unpacking it


@dataclass(frozen=True)
class Archive:
    """One file to fetch: where from, and the sha256 it must have (None: not pinned, only reported)."""

    url: str
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return unquote(PurePosixPath(urlparse(self.url).path).name)


def resolve_archives(
    pinned: Sequence[Archive], url: str | None = None, sha256: str | Mapping[str, str] | None = None
) -> list[Archive]:
    """Apply the `dataset.url` / `dataset.sha256` overrides (mirrors, air-gapped copies) to pinned archives.

    With one archive, `url` is that archive; with several, `url` is a folder (http, file:// or a path) that
    holds them under their usual names. An overridden url keeps the pinned checksum, since a mirror serves the
    same bytes, unless `sha256` is given: a string for one archive, a mapping file name -> sha256 for several.
    """
    several = len(pinned) > 1
    if isinstance(sha256, str) and several:
        names = ", ".join(a.filename for a in pinned)
        raise ValueError(f"dataset.sha256 must map each archive ({names}) to its sha256, not be one string")
    resolved = []
    for archive in pinned:
        new_url = archive.url
        if url:
            new_url = f"{str(url).rstrip('/')}/{archive.filename}" if several else str(url)
        digest = archive.sha256
        if isinstance(sha256, str):
            digest = sha256
        elif sha256:
            digest = sha256.get(archive.filename, digest)
        resolved.append(Archive(new_url, digest.lower() if digest else None))
    return resolved


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an inter-process lock, saying so when another process has it."""
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("Waiting for another process that is preparing the same dataset (lock %s).", path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _local_path(url: str) -> Path | None:
    """The file a `file://` URL or a plain path names; None for network URLs."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "":
        return Path(url).expanduser()
    return None


def _obtain(archive: Archive, root: Path, folder: str, download: bool) -> Path:
    """A verified copy of `archive`: a local file used in place, one already in root, or a fresh download."""
    path = _local_path(archive.url)
    if path is not None and not path.is_file():
        raise DownloadError(f"dataset.url points at {path}, which is not a file; fix dataset.url.")
    if path is None:
        path = root / archive.filename
        if not path.is_file():
            if not download:
                raise DownloadError(
                    f"{root / folder} does not exist and dataset.download=false. Set dataset.download=true "
                    f"to fetch {archive.url}, or fetch it by hand and put it in {root} (or set "
                    f"dataset.url=file:///path/to/{archive.filename})."
                )
            log.info("Downloading %s to %s", archive.url, path)
            return download_file(archive.url, path, sha256=archive.sha256)
    try:
        verify_sha256(path, archive.sha256, archive.url)
    except ChecksumError as exc:
        raise ChecksumError(
            f"{exc} Replace {path} with the right file (delete it to download it again), or set "
            "dataset.sha256 to the value above if you trust it."
        ) from None
    return path


def prepare_dataset(
    root: Path, folder: str, archives: Sequence[Archive], *, download: bool = True, inner: str | None = None
) -> Path:
    """Return `root/folder`, first fetching, verifying and unpacking `archives` into it if it is missing.

    `inner` names the folder inside the archives that becomes `root/folder` (archives that wrap everything in
    one top folder); None takes the whole extracted tree. A folder put there by hand is used as it is.
    """
    root = Path(root).expanduser()
    final = root / folder
    if (final / MARKER).is_file():
        return final
    if final.is_dir():
        log.warning("Using %s as it is: it was not unpacked by trainer (no %s marker).", final, MARKER)
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{folder}.lock"):
        if final.is_dir():  # another process finished it while we waited
            return final
        paths = [_obtain(archive, root, folder, download) for archive in archives]
        partial = root / f".{folder}.partial"
        shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run
        try:
            for path in paths:
                log.info("Extracting %s", path)
                extract_archive(path, partial)
            tree = partial / inner if inner else partial
            if not tree.is_dir():
                names = ", ".join(p.name for p in paths)
                raise DownloadError(
                    f"{names} has no top folder {inner!r}; is dataset.url the right archive for this dataset?"
                )
            sources = [{"url": a.url, "sha256": a.sha256} for a in archives]
            (tree / MARKER).write_text(json.dumps(sources, indent=1) + "\n")
            os.replace(tree, final)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    log.info("Dataset ready in %s", final)
    return final
