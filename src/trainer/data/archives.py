"""Unpack dataset archives (tar of any compression, zip) only after checking every member.

An archive from the internet may be damaged or hostile: a member with an absolute path, a `..`, a link out
of the folder (or one under such a link), a device or a pipe is refused before anything is written, so
extraction never touches a file outside the folder it unpacks into.
"""

from __future__ import annotations

import posixpath
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from trainer.data.fetch import DownloadError

# Python >= 3.11.4 / 3.12 can also filter tar members itself; we check every member first regardless.
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


class UnsafeArchiveError(DownloadError):
    """An archive member would land outside the extraction folder."""


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
