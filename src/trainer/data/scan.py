"""Find unreadable images before training starts, not three hours in.

Every file of the index is decoded once (cheaply, at reduced JPEG scale, in threads since PIL releases the
GIL); the verdicts are cached under ~/.cache/trainer keyed by every file's path, size and mtime, so a
later run over an unchanged dataset skips the decoding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trainer.data.images import check_image
from trainer.data.index import DatasetIndex, Sample

log = logging.getLogger(__name__)


class BadImagesError(ValueError):
    """Unreadable images were found and `dataset.on_bad_image=error` asked to stop."""


def cache_dir() -> Path:
    return Path(os.environ.get("TRAINER_CACHE", Path.home() / ".cache" / "trainer"))


def _fingerprint(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()


def find_bad_images(paths: list[str], workers: int | None = None) -> dict[str, str]:
    """Return {path: reason} for every path that does not decode; cached while the files are unchanged."""
    unique = sorted(set(paths))
    cache_file = cache_dir() / "scan" / f"{_fingerprint(unique)}.json"
    if cache_file.exists():
        return json.loads(cache_file.read_text())
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) * 2)) as pool:
        verdicts = dict(zip(unique, pool.map(check_image, unique), strict=True))
    bad = {p: reason for p, reason in verdicts.items() if reason is not None}
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(bad))
    os.replace(tmp, cache_file)
    return bad


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
    for split, samples in (("train", index.train), ("val", index.val)):
        present = {label for _, label in samples}
        missing = [index.classes[i] for i in range(index.num_classes) if i not in present]
        if missing:
            raise BadImagesError(
                f"after skipping unreadable images, the {split} split has no images of: {', '.join(missing)}"
            )
    return bad
