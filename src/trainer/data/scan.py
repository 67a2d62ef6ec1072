"""Find unreadable images before training starts, not three hours in.

Every file of the index is decoded once (cheaply, at reduced JPEG scale, in threads since PIL releases the
GIL), and what that decode learns (trainer.data.facts: readable or why not, size, hashes for the audit) is
cached under ~/.cache/trainer keyed by every file's path, size and mtime, so a later run over an unchanged
dataset skips the decoding. Non-regular files are refused unopened and one file may decode for at most
DECODE_TIME_LIMIT_S: a scan always ends.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from trainer.data.facts import inspect_file
from trainer.data.index import DatasetIndex, Sample
from trainer.utils.cpus import usable_cpus
from trainer.utils.files import write_json

log = logging.getLogger(__name__)

DECODE_TIME_LIMIT_S = 60.0
CACHE_VERSION = "facts-2"  # bump when trainer.data.facts records change
T = TypeVar("T")
R = TypeVar("R")


class BadImagesError(ValueError):
    """Unreadable images were found and `dataset.on_bad_image=error` asked to stop."""


def cache_dir() -> Path:
    return Path(os.environ.get("TRAINER_CACHE", Path.home() / ".cache" / "trainer"))


def _fingerprint(paths: list[str]) -> str:
    h = hashlib.sha256(CACHE_VERSION.encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()


def map_with_time_limit(
    fn: Callable[[T], R], items: Sequence[T], workers: int, limit_s: float, timed_out: R
) -> list[R]:
    """`fn` over `items` in daemon threads; an item still running after `limit_s` gets `timed_out`.

    A stuck call cannot be interrupted, so its thread is abandoned (a daemon never keeps the process alive)
    and a fresh worker takes its place. `fn` must not raise.
    """
    todo: queue.Queue[int] = queue.Queue()
    for i in range(len(items)):
        todo.put(i)
    done: queue.Queue[tuple[int, R]] = queue.Queue()
    running: dict[int, float] = {}
    lock = threading.Lock()

    def worker() -> None:
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            with lock:
                running[i] = time.monotonic()
            done.put((i, fn(items[i])))

    def spawn() -> None:
        threading.Thread(target=worker, daemon=True, name="scan").start()

    for _ in range(max(1, min(workers, len(items)))):
        spawn()
    results: dict[int, R] = {}
    while len(results) < len(items):
        try:
            i, result = done.get(timeout=min(1.0, limit_s / 4))
        except queue.Empty:
            now = time.monotonic()
            with lock:
                late = [i for i, started in running.items() if now - started > limit_s]
                for i in late:
                    del running[i]
            for i in late:
                results[i] = timed_out
                spawn()
            continue
        with lock:
            running.pop(i, None)
        results.setdefault(i, result)  # a late answer of an abandoned call does not override its verdict
    return [results[i] for i in range(len(items))]


def scan_files(paths: list[str], workers: int | None = None) -> dict[str, dict[str, Any]]:
    """{path: facts} (see trainer.data.facts) for every path; cached while the files are unchanged."""
    unique = sorted(set(paths))
    cache_file = cache_dir() / "scan" / f"{_fingerprint(unique)}.json"
    if cache_file.exists():
        return json.loads(cache_file.read_text(encoding="utf-8"))
    timed_out = {"error": f"decoding took longer than {DECODE_TIME_LIMIT_S:g} s: skipped"}
    workers = workers or min(8, usable_cpus() * 2)
    facts = map_with_time_limit(inspect_file, unique, workers, DECODE_TIME_LIMIT_S, timed_out)
    found = dict(zip(unique, facts, strict=True))
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    write_json(cache_file, found, indent=None)
    return found


def find_bad_images(paths: list[str], workers: int | None = None) -> dict[str, str]:
    """Return {path: reason} for every path that cannot be used as an image."""
    return {p: f["error"] for p, f in scan_files(paths, workers).items() if f["error"] is not None}


def drop_bad_images(index: DatasetIndex, on_bad_image: str = "skip") -> dict[str, str]:
    """Scan `index`, log each unreadable file with its reason, and remove them (or raise on 'error')."""
    if on_bad_image not in ("skip", "error"):
        raise ValueError(f"dataset.on_bad_image={on_bad_image!r}: use 'skip' or 'error'")
    bad = find_bad_images([p for p, _ in index.train + index.val])
    if not bad:
        return bad
    listing = "\n".join(f"  {path}: {reason}" for path, reason in sorted(bad.items()))
    if on_bad_image == "error":
        raise BadImagesError(
            f"{len(bad)} unreadable image(s):\n{listing}\n"
            "Fix or delete them, or set dataset.on_bad_image=skip to train without them."
        )
    log.warning("Skipping %d unreadable image(s):\n%s", len(bad), listing)

    def keep(samples: list[Sample]) -> list[Sample]:
        return [s for s in samples if s[0] not in bad]

    index.train, index.val = keep(index.train), keep(index.val)
    require_every_class(index, "after skipping unreadable images")
    return bad


def require_every_class(index: DatasetIndex, after: str) -> None:
    """Raise BadImagesError naming the classes a split has lost every image of."""
    for split, samples in (("train", index.train), ("val", index.val)):
        present = {label for _, label in samples}
        missing = [index.classes[i] for i in range(index.num_classes) if i not in present]
        if missing:
            raise BadImagesError(f"{after}, the {split} split has no images of: {', '.join(missing)}")
