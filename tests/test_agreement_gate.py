"""The agreement gate on quantized copies: how often the copy picks a different class than the fp32 PyTorch
model, on both sides of export.min_agreement, as the manifest, the console summary and the card report it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_export import export_config, synthetic_job

from trainer.console.summary import artifact_table
from trainer.export.handoff.model_card import _quantization_lines
from trainer.export.job import ExportJob
from trainer.export.settings import ExportSettings
from trainer.export.verify import compare

PHOTOS = 40


def _copy(labels: np.ndarray, changed: int) -> np.ndarray:
    """Logits that pick the label except on the first `changed` photos."""
    picks = labels.copy()
    picks[:changed] = (labels[:changed] + 1) % 3
    return np.eye(3, dtype=np.float32)[picks]


def _measure(job: ExportJob, name: str, fp32: np.ndarray, outputs: np.ndarray) -> dict:
    """What job.verify then job.compare_with_fp32 store for a quantized copy."""
    entry = {"name": name, "path": name, "format": "onnx", "precision": "int8", "kind": "classifier"}
    entry.update(size_bytes=1000, sha256="0" * 64)
    entry.update(compare(job.reference, outputs, job.labels))
    job.compare_with_fp32(name, entry, fp32, outputs)
    return entry


def test_copy_at_the_threshold_passes_and_one_below_fails(tmp_path: Path) -> None:
    labels = np.arange(PHOTOS) % 3
    job = synthetic_job(tmp_path, labels, min_agreement=0.95)
    fp32 = np.eye(3, dtype=np.float32)[labels]
    passing = _measure(job, "model_int8.onnx", fp32, _copy(labels, 2))  # 38/40 = 95%
    failing = _measure(job, "model_int8.tflite", fp32, _copy(labels, 4))  # 36/40 = 90%
    assert passing["agreement_gate"]["passed"] and passing["agreement_gate"]["value"] == 0.95
    gate = failing["agreement_gate"]
    assert not gate["passed"] and gate["value"] == 0.9 and gate["rule"] == "top1_agreement >= 0.95"
    assert gate["top1_drop"] == 10.0 and gate["top1_drop_p_value"] == 0.0625
    assert job.warnings == [
        "model_int8.tflite failed its agreement gate (top1_agreement >= 0.95): the phone gives a different "
        "answer than the evaluation on 10.0% of photos (top-1 -10.00 points vs fp32, within chance: "
        "sign-test p 0.0625)"
    ]
    manifest = {"artifacts": [passing, failing], "errors": [], "skipped": [], "warnings": job.warnings}
    rows = {line.split()[0]: line for line in artifact_table(manifest)[1:] if line.strip()}
    assert rows["model_int8.onnx"].endswith("passed")
    assert rows["model_int8.tflite"].endswith("FAILED agreement gate: 10.0% of answers differ")
    card = "\n".join(_quantization_lines(manifest))
    assert (
        "; agreement gate top1_agreement >= 0.95: passed: the phone gives a different answer than the "
        "evaluation on 5.0% of photos" in card
    )
    assert (
        "; agreement gate top1_agreement >= 0.95: **FAILED**: the phone gives a different answer than the "
        "evaluation on 10.0% of photos (top-1 -10.00 points vs fp32, within chance: sign-test p 0.0625)."
        in card
    )


def test_gains_that_cancel_losses_do_not_hide_a_copy_that_answers_differently(tmp_path: Path) -> None:
    """Top-1 unchanged (as many photos gained as lost), yet 20% of answers differ: the gate fails."""
    labels = np.arange(PHOTOS) % 3
    fp32_picks = labels.copy()
    fp32_picks[:4] = (labels[:4] + 1) % 3  # fp32 wrong on photos 0-3
    copy_picks = fp32_picks.copy()
    copy_picks[:4] = labels[:4]  # the copy right on them (4 gained)...
    copy_picks[4:8] = (labels[4:8] + 1) % 3  # ...and wrong on 4 fp32 got right (4 lost)
    job = synthetic_job(tmp_path, labels)
    job.reference = np.eye(3, dtype=np.float32)[fp32_picks]
    fp32 = job.reference.copy()
    entry = _measure(job, "model_int8.pte", fp32, np.eye(3, dtype=np.float32)[copy_picks])
    assert entry["top1_drop_vs_fp32"] == 0.0 and entry["top1_images_lost_gained"] == [4, 4]
    assert entry["agreement_gate"]["value"] == 0.8 and not entry["agreement_gate"]["passed"]
    expected = "20.0% of photos (top-1 +0.00 points vs fp32, within chance: sign-test p 0.6367)"
    assert expected in job.warnings[0]


def test_the_threshold_is_a_setting(tmp_path: Path) -> None:
    labels = np.arange(PHOTOS) % 3
    job = synthetic_job(tmp_path, labels, min_agreement=0.85)
    entry = _measure(job, "model_int8.onnx", job.reference.copy(), _copy(labels, 4))
    assert entry["agreement_gate"]["passed"] and job.warnings == []
    with pytest.raises(
        ValueError, match=r"^export.min_agreement=1.5: a share of val photos, between 0 and 1"
    ):
        ExportSettings.from_config(export_config(min_agreement=1.5))


def test_an_int8_copy_not_faster_than_fp32_is_a_warning(tmp_path: Path) -> None:
    """Latency against the format's fp32 file, both measured in the same export: a mixed-precision ONNX copy
    can be slower than fp32 (trashnet, 128 px: 1.3-1.6x), and the warning names what to change."""
    labels = np.arange(PHOTOS) % 3
    job = synthetic_job(tmp_path, labels)
    fp32 = np.eye(3, dtype=np.float32)[labels]
    job.artifacts.append({"format": "onnx", "kind": "classifier", "precision": "fp32", "latency_ms": 2.0})
    fast, slow = ({"latency_ms": ms, "float_layers": ["features.0.0"]} for ms in (1.4, 2.6))
    all_int8 = {"latency_ms": 2.6, "float_layers": []}  # slower too, but nothing to change: recorded only
    for name, entry in (("fast", fast), ("slow", slow), ("all_int8", all_int8)):
        entry.update(_measure(job, name, fp32, fp32), latency_ms=entry["latency_ms"])
        job.check_latency(name, entry)
    assert fast["latency_vs_fp32"] == 0.7 and slow["latency_vs_fp32"] == all_int8["latency_vs_fp32"] == 1.3
    assert job.warnings == [
        "slow is not faster than its fp32 file: 1.3x its latency; export.int8.keep_float=auto kept 1 layer "
        "float (export.int8.keep_float=none: the fastest copy)"
    ]
