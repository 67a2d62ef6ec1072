"""ONNX Runtime Web for try.html: the three files the page needs (about 15 MB), kept in a local cache that
one command fills from the npm registry, and copied beside the page at export time (no CDN: the page works
offline, from a local server).

    trainer-fetch-ort-web        # needs npm; TRAINER_ORT_WEB_DIR=<folder> to keep them elsewhere
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "1.31.1"
FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
FETCH_COMMAND = "trainer-fetch-ort-web"
ENV = "TRAINER_ORT_WEB_DIR"  # a folder holding FILES, instead of the cache


def runtime_dir() -> Path:
    """Where the runtime files are looked for: $TRAINER_ORT_WEB_DIR, else the user cache."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "trainer" / f"onnxruntime-web-{VERSION}"


def missing_reason() -> str | None:
    """Why try.html has no runtime (None when it has one)."""
    folder = runtime_dir()
    absent = [name for name in FILES if not (folder / name).is_file()]
    if absent:
        return (
            f"ONNX Runtime Web is not in {folder} (missing {', '.join(absent)}): run `{FETCH_COMMAND}` once"
        )
    return None


def copy_runtime(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(runtime_dir() / name, dest / name)


def fetch(folder: Path | None = None) -> Path:
    """`npm pack onnxruntime-web@VERSION` and keep FILES from its dist/ in `folder` (the cache)."""
    folder = folder or runtime_dir()
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"{FETCH_COMMAND}: npm is not installed; install Node.js (npm) and run it again")
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(
            [npm, "pack", f"onnxruntime-web@{VERSION}", "--pack-destination", work, "--loglevel=error"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with tarfile.open(next(Path(work).glob("*.tgz"))) as archive:
            folder.mkdir(parents=True, exist_ok=True)
            for name in FILES:
                source = archive.extractfile(f"package/dist/{name}")
                if source is None:
                    raise RuntimeError(f"onnxruntime-web@{VERSION} has no dist/{name}")
                (folder / name).write_bytes(source.read())
    return folder


def main() -> None:
    print(f"ONNX Runtime Web {VERSION} in {fetch()}", file=sys.stderr)


if __name__ == "__main__":
    main()
