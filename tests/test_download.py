"""Fetching, archive safety and dataset preparation, against a real local HTTP server: verify, resume, retry,
unpack, lock."""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
import os
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from http_server import http_server_fixture  # noqa: F401  (the http_server fixture)

from trainer.data.archives import UnsafeArchiveError, extract_archive
from trainer.data.fetch import ChecksumError, DownloadError, download_file
from trainer.data.prepare import MARKER, Archive, prepare_dataset, resolve_archives

BLOB = os.urandom(300_000)
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()


def _serve_blob(server) -> str:
    (server.directory / "blob.bin").write_bytes(BLOB)
    return server.url("blob.bin")


def _dataset_tgz(path: Path, top: str = "toy") -> str:
    """A small .tgz with one top folder holding two files; returns its sha256."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {f"{top}/a/one.txt": b"one", f"{top}/b/two.txt": b"two" * 1000}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- download_file ----------------------------------------------------------------------------------------


def test_download_verifies_and_moves_into_place(http_server, tmp_path):
    dest = download_file(_serve_blob(http_server), tmp_path / "dl" / "blob.bin", sha256=BLOB_SHA)
    assert dest.read_bytes() == BLOB
    assert not (tmp_path / "dl" / "blob.bin.part").exists()
    assert len(http_server.requests_for("blob.bin")) == 1


def test_unpinned_checksum_is_reported_not_checked(http_server, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="trainer.data.fetch"):
        dest = download_file(_serve_blob(http_server), tmp_path / "blob.bin", sha256=None)
    assert dest.read_bytes() == BLOB
    assert BLOB_SHA in caplog.text and "not pinned" in caplog.text


def test_wrong_checksum_deletes_partial_and_explains(http_server, tmp_path):
    url = _serve_blob(http_server)
    with pytest.raises(ChecksumError) as err:
        download_file(url, tmp_path / "blob.bin", sha256="0" * 64)
    message = str(err.value)
    assert url in message and "0" * 64 in message and BLOB_SHA in message
    assert "Deleted" in message and "dataset.sha256" in message
    assert list(tmp_path.iterdir()) == [tmp_path / "www"]  # neither blob.bin nor blob.bin.part


def test_truncated_download_is_resumed_with_range(http_server, tmp_path):
    url = _serve_blob(http_server)
    (tmp_path / "blob.bin.part").write_bytes(BLOB[:123_456])
    dest = download_file(url, tmp_path / "blob.bin", sha256=BLOB_SHA)
    assert dest.read_bytes() == BLOB
    [request] = http_server.requests_for("blob.bin")
    assert request.range == "bytes=123456-" and request.status == 206
    deadline = time.monotonic() + 5  # the server thread counts its last chunk after the client has it
    while request.sent < len(BLOB) - 123_456 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert request.sent == len(BLOB) - 123_456


def test_server_without_range_support_restarts_cleanly(http_server, tmp_path):
    url = _serve_blob(http_server)
    http_server.faults.ignore_range = True
    (tmp_path / "blob.bin.part").write_bytes(BLOB[:1000])
    assert download_file(url, tmp_path / "blob.bin", sha256=BLOB_SHA).read_bytes() == BLOB


def test_complete_part_file_is_not_fetched_again(http_server, tmp_path):
    url = _serve_blob(http_server)
    (tmp_path / "blob.bin.part").write_bytes(BLOB)
    assert download_file(url, tmp_path / "blob.bin", sha256=BLOB_SHA).read_bytes() == BLOB
    assert [r.status for r in http_server.requests_for("blob.bin")] == [416]


def test_dropped_connection_is_retried_and_resumed(http_server, tmp_path):
    url = _serve_blob(http_server)
    http_server.faults.drop_after, http_server.faults.drop_times = 100_000, 2
    dest = download_file(url, tmp_path / "blob.bin", sha256=BLOB_SHA, retries=3, backoff_s=0.01)
    assert dest.read_bytes() == BLOB
    ranges = [r.range for r in http_server.requests_for("blob.bin")]
    assert ranges == [None, "bytes=100000-", "bytes=200000-"]


def test_gives_up_after_retries_and_keeps_partial(http_server, tmp_path):
    url = _serve_blob(http_server)
    http_server.faults.drop_after, http_server.faults.drop_times = 1000, 99
    with pytest.raises(DownloadError, match="after 3 attempts") as err:
        download_file(url, tmp_path / "blob.bin", sha256=BLOB_SHA, retries=2, backoff_s=0.01)
    assert url in str(err.value) and "dataset.url=file://" in str(err.value)
    assert (tmp_path / "blob.bin.part").stat().st_size == 3000  # kept for the next run to resume


def test_http_error_names_url_and_is_not_retried(http_server, tmp_path):
    url = http_server.url("missing.tgz")
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        download_file(url, tmp_path / "missing.tgz", retries=3, backoff_s=0.01)
    assert url in str(err.value)
    assert len(http_server.requests_for("missing.tgz")) == 1


def test_bad_url_fails_at_once_and_names_it(tmp_path):
    with pytest.raises(DownloadError, match="unknown url type") as err:
        download_file("nosuch://host/x.tgz", tmp_path / "x.tgz", retries=3, backoff_s=10)
    assert "nosuch://host/x.tgz" in str(err.value) and "dataset.url" in str(err.value)


# --- resolve_archives -------------------------------------------------------------------------------------


def test_url_override_keeps_pinned_checksum_unless_given():
    pinned = [Archive("https://example.org/d/data.tgz", "ab" * 32)]
    assert resolve_archives(pinned) == pinned
    assert resolve_archives(pinned, "file:///mnt/usb/data.tgz") == [
        Archive("file:///mnt/usb/data.tgz", "ab" * 32)
    ]
    assert resolve_archives(pinned, None, "CD" * 32) == [Archive(pinned[0].url, "cd" * 32)]


def test_several_archives_take_a_mirror_folder_and_a_checksum_mapping():
    pinned = [Archive("http://h/x/images.tar", "11" * 32), Archive("http://h/x/lists.tar", None)]
    resolved = resolve_archives(pinned, "http://mirror/dogs/", {"lists.tar": "22" * 32})
    assert resolved == [
        Archive("http://mirror/dogs/images.tar", "11" * 32),
        Archive("http://mirror/dogs/lists.tar", "22" * 32),
    ]
    with pytest.raises(ValueError, match="images.tar, lists.tar"):
        resolve_archives(pinned, None, "33" * 32)


# --- safe extraction --------------------------------------------------------------------------------------


def _tar_with(path: Path, *members: tuple[str, str, str]) -> Path:
    """Members are (kind, name, payload): kind file (payload = data), sym or hard (payload = link target)."""
    with tarfile.open(path, "w") as tar:
        for kind, name, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload.encode()))
                continue
            info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
            info.linkname = payload
            tar.addfile(info)
    return path


UNSAFE_TARS = {
    "dotdot": [("file", "ok.txt", "fine"), ("file", "../evil", "pwned")],
    "absolute": [("file", "{abs}", "pwned")],
    "symlink_out": [("file", "ok.txt", "fine"), ("sym", "link", "../..")],
    "symlink_absolute": [("sym", "link", "{outside}")],
    "hardlink_out": [("hard", "hl", "../evil")],
    "symlink_chain": [("sym", "d/a", ".."), ("sym", "d/a/e", "..")],
}


@pytest.mark.parametrize("case", sorted(UNSAFE_TARS))
def test_unsafe_tar_members_are_refused(tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    members = [
        (kind, name.format(abs=tmp_path / "evil"), payload.format(outside=outside))
        for kind, name, payload in UNSAFE_TARS[case]
    ]
    archive = _tar_with(tmp_path / "bad.tar", *members)
    dest = tmp_path / "root" / "dest"
    with pytest.raises(UnsafeArchiveError) as err:
        extract_archive(archive, dest)
    assert repr(members[-1][1]) in str(err.value)  # the offending (last) member is named
    assert list(dest.iterdir()) == []  # refused before anything is written
    assert not (tmp_path / "evil").exists() and not (tmp_path / "root" / "evil").exists()
    assert list(outside.iterdir()) == []


def test_unsafe_zip_member_is_refused(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", "ok")
        zf.writestr("../evil", "pwned")
    with pytest.raises(UnsafeArchiveError, match=r"'\.\./evil'"):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "evil").exists()


def test_safe_links_inside_the_archive_are_kept(tmp_path):
    archive = _tar_with(tmp_path / "ok.tar", ("file", "top/a.txt", "A"), ("sym", "top/alias.txt", "a.txt"))
    extract_archive(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "top" / "alias.txt").read_text() == "A"


# --- prepare_dataset: atomic, locked, offline-friendly ----------------------------------------------------


def test_prepare_downloads_extracts_and_marks_once(http_server, tmp_path):
    sha = _dataset_tgz(http_server.directory / "toy.tgz")
    archives = [Archive(http_server.url("toy.tgz"), sha)]
    root = tmp_path / "data"
    folder = prepare_dataset(root, "toy", archives, inner="toy")
    assert folder == root / "toy"
    assert (folder / "b" / "two.txt").read_bytes() == b"two" * 1000
    assert sha in (folder / MARKER).read_text()
    assert prepare_dataset(root, "toy", archives, inner="toy") == folder
    assert len(http_server.requests_for("toy.tgz")) == 1
    assert not any(p.name.endswith((".partial", ".part")) for p in root.iterdir())


def test_failed_extraction_leaves_no_dataset_behind(http_server, tmp_path):
    good = tmp_path / "good.tgz"
    _dataset_tgz(good)
    (http_server.directory / "toy.tgz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="could not be extracted"):
        prepare_dataset(root, "toy", [Archive(http_server.url("toy.tgz"))], inner="toy")
    assert not (root / "toy").exists() and not (root / ".toy.partial").exists()


def test_leftovers_of_an_interrupted_run_are_not_trusted(http_server, tmp_path):
    sha = _dataset_tgz(http_server.directory / "toy.tgz")
    root = tmp_path / "data"
    (root / ".toy.partial" / "toy" / "a").mkdir(parents=True)  # as a killed extraction leaves it
    (root / ".toy.partial" / "toy" / "a" / "stale.txt").write_text("half")
    folder = prepare_dataset(root, "toy", [Archive(http_server.url("toy.tgz"), sha)], inner="toy")
    assert sorted(p.name for p in (folder / "a").iterdir()) == ["one.txt"]
    assert not (root / ".toy.partial").exists()


def test_wrong_top_folder_is_reported(http_server, tmp_path):
    sha = _dataset_tgz(http_server.directory / "toy.tgz", top="other")
    with pytest.raises(DownloadError, match="no top folder 'toy'"):
        prepare_dataset(tmp_path / "data", "toy", [Archive(http_server.url("toy.tgz"), sha)], inner="toy")
    assert not (tmp_path / "data" / "toy").exists()


def test_download_false_explains_how_to_get_it(http_server, tmp_path):
    url = http_server.url("toy.tgz")
    with pytest.raises(DownloadError, match="dataset.download=false") as err:
        prepare_dataset(tmp_path / "data", "toy", [Archive(url)], download=False, inner="toy")
    assert url in str(err.value) and "dataset.url=file://" in str(err.value)
    assert http_server.requests == []


def test_air_gapped_copies_need_no_network(tmp_path):
    usb = tmp_path / "usb"
    usb.mkdir()
    sha = _dataset_tgz(usb / "toy.tgz")
    by_url = prepare_dataset(tmp_path / "a", "toy", [Archive((usb / "toy.tgz").as_uri(), sha)], inner="toy")
    assert (by_url / "a" / "one.txt").read_text() == "one"
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if not p.name.startswith(".")) == [
        "toy"
    ]  # no copy
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "toy.tgz").write_bytes((usb / "toy.tgz").read_bytes())
    offline = [Archive("http://127.0.0.1:9/unreachable/toy.tgz", sha)]
    in_root = prepare_dataset(tmp_path / "b", "toy", offline, download=False, inner="toy")
    assert (in_root / "a" / "one.txt").read_text() == "one"


def test_wrong_local_copy_is_reported_not_deleted(tmp_path):
    sha = _dataset_tgz(tmp_path / "toy.tgz")
    with pytest.raises(ChecksumError, match="dataset.sha256"):
        prepare_dataset(tmp_path / "data", "toy", [Archive(str(tmp_path / "toy.tgz"), "f" * 64)], inner="toy")
    assert hashlib.sha256((tmp_path / "toy.tgz").read_bytes()).hexdigest() == sha


def test_two_processes_share_one_download(http_server, tmp_path):
    sha = _dataset_tgz(http_server.directory / "toy.tgz")
    http_server.faults.throttle_s = 2.0  # the first process holds the lock while the second arrives
    root = tmp_path / "data"
    args = (root, "toy", [Archive(http_server.url("toy.tgz"), sha)])
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as two separate runs would be
    first, second = (
        ctx.Process(target=prepare_dataset, args=args, kwargs={"inner": "toy"}) for _ in range(2)
    )
    first.start()
    deadline = time.monotonic() + 30
    while not http_server.requests_for("toy.tgz") and time.monotonic() < deadline:
        time.sleep(0.02)
    second.start()  # the first is mid-download, holding the lock
    for worker in (first, second):
        worker.join(timeout=60)
    assert [first.exitcode, second.exitcode] == [0, 0]
    assert len(http_server.requests_for("toy.tgz")) == 1
    assert (root / "toy" / MARKER).is_file() and (root / "toy" / "a" / "one.txt").read_text() == "one"


def test_unresolvable_host_fails_at_once(tmp_path):
    """Poor: a DNS failure was retried five times (73 s) before the clear message."""
    started = time.perf_counter()
    with pytest.raises(DownloadError, match="does not resolve"):
        download_file("http://no-such-host.invalid/x.tgz", tmp_path / "x.tgz", retries=5, backoff_s=10)
    assert time.perf_counter() - started < 10
