"""Fetch one file over HTTP into place: resumed, retried, shown with a progress bar, checked by sha256.

Downloads resume (HTTP Range into a `.part` file) and retry with backoff, because multi-GB archives over
flaky links are the normal case. The `.part` file becomes the real name only once its sha256 matches the
pinned one, so nothing half-fetched or corrupt ever looks like a finished download. Standard library and tqdm.
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from trainer.utils.files import sha256_file

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_RETRY_HTTP_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadError(RuntimeError):
    """A dataset archive could not be fetched or unpacked; the message says what to do."""


class ChecksumError(DownloadError):
    """The bytes fetched are not the archive the config pins."""


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
            if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, socket.gaierror):
                raise DownloadError(  # no DNS answer: offline, or a typo in the host; waiting will not help
                    f"Cannot download {url}: the host name does not resolve ({exc.reason.strerror}). Check "
                    "the network (offline?) and dataset.url, or fetch it by hand and set "
                    f"dataset.url=file:///path/to/{dest.name}."
                ) from exc
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
