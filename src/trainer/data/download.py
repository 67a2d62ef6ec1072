"""Fetch, verify and unpack dataset archives: the one mechanism every named dataset uses.

Downloads resume (HTTP Range into a `.part` file) and retry with backoff, because multi-GB archives over
flaky links are the normal case. Archives are checked against a pinned sha256 before anything trusts them,
and unpacked into a temporary folder that is renamed into place only when complete, under a file lock, so an
interrupted or concurrent run never leaves a half dataset that a later run would mistake for a whole one.
Only the standard library, tqdm and filelock are used.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import posixpath
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import unquote, urlparse

from filelock import FileLock, Timeout
from tqdm import tqdm

from trainer.utils.files import sha256_file

log = logging.getLogger(__name__)

MARKER = ".trainer-complete"  # written into a dataset folder as the last step of unpacking it
_CHUNK = 1 << 20
_RETRY_HTTP_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})
# Python >= 3.11.4 / 3.12 can also filter tar members itself; we check every member first regardless.
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


class DownloadError(RuntimeError):
    """A dataset archive could not be fetched or unpacked; the message says what to do."""


class ChecksumError(DownloadError):
    """The bytes fetched are not the archive the config pins."""


class UnsafeArchiveError(DownloadError):
    """An archive member would land outside the extraction folder."""


class _TransientError(Exception):
    """A failure worth retrying (short read, server busy)."""


# Network trouble is retried; disk errors, bad URLs and HTTP 4xx are not (retrying cannot fix them).
_RETRYABLE = (
    _TransientError,
    urllib.error.URLError,
    ConnectionError,
    TimeoutError,
    http.client.HTTPException,
)


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


def verify_sha256(path: Path, expected: str | None, url: str) -> str:
    """Check `path` against `expected`; with no pinned value, report the digest so it can be pinned."""
    actual = sha256_file(path)
    if expected is None:
        log.warning(
            "%s: sha256 is not pinned, nothing verified. Its sha256 is %s (set dataset.sha256 to pin it).",
            url,
            actual,
        )
    elif actual != expected.lower():
        raise ChecksumError(
            f"sha256 mismatch for {url} ({path}): expected {expected}, got {actual}. "
            "The archive is corrupt or is not the pinned release."
        )
    return actual


def download_file(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
) -> Path:
    """Download `url` to `dest` via `dest.part`, resuming and retrying, then verify it and move it in place.

    A checksum mismatch deletes the partial file (it cannot be resumed into the right bytes).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_into(url, part, timeout_s)
            break
        except _RETRYABLE as exc:
            if isinstance(exc, urllib.error.URLError) and not isinstance(exc.reason, OSError):
                raise DownloadError(f"Cannot download {url}: {exc.reason}. Check dataset.url.") from exc
            if attempt == retries:
                raise DownloadError(
                    f"Could not download {url} after {retries + 1} attempts ({exc}). Check the network and "
                    f"run again (the partial file {part} is resumed), or fetch it by hand and set "
                    f"dataset.url=file:///path/to/{dest.name}."
                ) from exc
            wait = backoff_s * 2**attempt
            done = part.stat().st_size if part.exists() else 0
            log.warning(
                "Download of %s failed (%s); retry %d/%d in %.1f s from byte %d.",
                url,
                exc,
                attempt + 1,
                retries,
                wait,
                done,
            )
            time.sleep(wait)
    try:
        verify_sha256(part, sha256, url)
    except ChecksumError as exc:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{exc} Deleted {part}. Run again to download it anew; if you trust this file (another mirror or "
            "release), set dataset.sha256 to the value above."
        ) from None
    os.replace(part, dest)
    return dest


def _fetch_into(url: str, part: Path, timeout_s: float) -> None:
    """One attempt: append the rest of `url` to `part` (Range request when part already holds bytes)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "trainer-dataset-download/1"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: part is complete, or longer than the file
            if _range_total(exc.headers.get("Content-Range")) == offset:
                return
            part.unlink()
            raise _TransientError(f"{part.name} is longer than the file on the server; restarting") from exc
        if exc.code in _RETRY_HTTP_CODES:
            raise _TransientError(f"HTTP {exc.code} {exc.reason}") from exc
        raise DownloadError(
            f"{url} answered HTTP {exc.code} {exc.reason}. Check dataset.url (or the pinned URL), or fetch "
            "the archive by hand and set dataset.url=file:///path/to/it."
        ) from exc
    with response:
        total = _expected_total(response, offset)
        if offset and getattr(response, "status", None) != 206:
            offset = 0  # the server ignored Range and sends the whole file
        elif offset and _range_start(response.headers.get("Content-Range")) != offset:
            part.unlink()
            raise _TransientError("server resumed at the wrong byte; starting over")
        with (
            open(part, "ab" if offset else "wb") as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=None,  # no bar when output is not a terminal (log files)
            ) as bar,
        ):
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:
        raise _TransientError(f"connection closed after {size} of {total} bytes")


def _expected_total(response: http.client.HTTPResponse, offset: int) -> int | None:
    total = _range_total(response.headers.get("Content-Range"))
    if total is not None:
        return total
    length = response.headers.get("Content-Length")
    if length is None:
        return None
    return int(length) + (offset if getattr(response, "status", None) == 206 else 0)


def _range_total(content_range: str | None) -> int | None:
    """Total size from `bytes a-b/total` or `bytes */total`."""
    if not content_range or "/" not in content_range:
        return None
    total = content_range.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _range_start(content_range: str | None) -> int | None:
    if not content_range:
        return None
    start = content_range.split()[-1].split("-", 1)[0]
    return int(start) if start.isdigit() else None


def _member_problem(name: str, links: set[str]) -> str | None:
    """Why a member name may not be extracted (absolute, climbing out, or under a link), else None."""
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive or name.startswith("\\"):
        return "has an absolute path"
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        return "contains '..'"
    for i in range(1, len(parts)):
        if posixpath.join(*parts[:i]) in links:
            return f"lies under the link {posixpath.join(*parts[:i])!r}"
    return None


def _escapes(target: str) -> bool:
    """True if a link target (already joined and normalised relative to the archive root) leaves it."""
    return PurePosixPath(target).is_absolute() or target == ".." or target.startswith("../")


def _check_link(name: str, linkname: str, *, hard: bool, links: set[str]) -> str | None:
    if PurePosixPath(linkname).is_absolute():
        return f"links to the absolute path {linkname!r}"
    base = "" if hard else posixpath.dirname(name)
    target = posixpath.normpath(posixpath.join(base, linkname))
    if _escapes(target):
        return f"links outside the dataset folder ({linkname!r})"
    if target in links:
        return f"links to another link ({linkname!r})"
    return None


def _refuse(archive: Path, member: str, problem: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"Refusing to extract {archive}: member {member!r} {problem}. Nothing was extracted. The archive is "
        "damaged or malicious: delete it and check dataset.url."
    )


def extract_archive(archive: Path, dest: Path) -> None:
    """Unpack a tar (any compression) or zip into `dest`, after checking that every member stays inside it."""
    dest.mkdir(parents=True, exist_ok=True)
    if archive.name.lower().endswith(".zip"):
        _extract_zip(archive, dest)
        return
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            links: set[str] = set()
            for member in members:
                name = posixpath.normpath(member.name)
                problem = _member_problem(member.name, links)
                if problem is None and (member.issym() or member.islnk()):
                    problem = _check_link(name, member.linkname, hard=member.islnk(), links=links)
                    links.add(name)
                elif problem is None and not (member.isfile() or member.isdir()):
                    problem = "is a device or pipe"
                if problem:
                    raise _refuse(archive, member.name, problem)
            tar.extractall(dest, members=members, **_TAR_FILTER)
    except (tarfile.TarError, EOFError) as exc:
        raise DownloadError(f"{archive} could not be extracted ({exc}); delete it, fetch it anew.") from exc


def _extract_zip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            links: set[str] = set()
            for info in zf.infolist():
                problem = _member_problem(info.filename, links)
                if problem is None and stat.S_ISLNK(info.external_attr >> 16):
                    name = posixpath.normpath(info.filename)
                    problem = _check_link(name, zf.read(info).decode(), hard=False, links=links)
                    links.add(name)
                if problem:
                    raise _refuse(archive, info.filename, problem)
            zf.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive} is not a readable zip ({exc}); delete it and fetch it anew.") from exc


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
