"""trainer.utils: files are complete or absent, file hashes match hashlib, CPUs are the usable ones, native
libraries' prints go to the log."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest

from trainer.utils.cpus import usable_cpus
from trainer.utils.files import atomic_output, sha256_file, write_json
from trainer.utils.native_output import native_output_to_log


def test_an_interrupted_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    write_json(path, {"name": "café", "top1": 0.5})
    assert path.read_text(encoding="utf-8") == '{\n  "name": "café",\n  "top1": 0.5\n}'
    with pytest.raises(KeyboardInterrupt), atomic_output(path) as tmp:
        tmp.write_text('{"name": "ca')
        raise KeyboardInterrupt
    assert json.loads(path.read_text(encoding="utf-8")) == {"name": "café", "top1": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_sha256_file_matches_hashlib_across_blocks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # more than one 1 MiB read block
    (tmp_path / "blob.bin").write_bytes(data)
    assert sha256_file(tmp_path / "blob.bin") == hashlib.sha256(data).hexdigest()


def test_usable_cpus_counts_the_affinity_mask_not_every_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert usable_cpus() == 2
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS, Windows: no mask, every core
    assert usable_cpus() == 64


def test_native_output_goes_to_the_log_not_the_console(
    capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="trainer.utils.native_output"):
        with native_output_to_log("a converter"):
            os.write(1, b"from C to stdout\n")
            os.write(2, b"from C to stderr\n")
            print("from Python")
        print("after the block")
    out, err = capfd.readouterr()
    assert out == "after the block\n" and err == ""
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG and record.getMessage().startswith("a converter printed:")
    for line in ("from C to stdout", "from C to stderr", "from Python"):
        assert line in record.getMessage()
