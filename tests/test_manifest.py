"""manifest.json's typed artifact entries; the model card's gate lines agree with the gates that ran."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from test_export import CLASSES, DATA_CONFIG, SIZE

from trainer.export.converters.coreml.gates import gate, gate_problem, measure
from trainer.export.handoff.model_card import model_card
from trainer.export.manifest import MANIFEST_NAME, ArtifactEntry, artifact_entry, write_manifest


def coreml_copy(tmp_path: Path, lost: int, images: int, variant: str = "int8") -> dict[str, Any]:
    """A Core ML entry as the pipeline records it, for a copy that gets `lost` of the `images` val images
    wrong that PyTorch gets right (and none the other way), measured and gated by the real code."""
    labels = np.arange(images) % len(CLASSES)
    wrong = labels.copy()
    wrong[:lost] = (labels[:lost] + 1) % len(CLASSES)
    reference, outputs = np.eye(len(CLASSES))[labels], np.eye(len(CLASSES))[wrong]
    index = np.arange(images, dtype=np.float32)[:, None]  # each "image" is its row number

    def predict(batch: np.ndarray) -> np.ndarray:
        return outputs[batch[:, 0].astype(int)]

    _, stats = measure(predict, index, reference, labels, 1.0)
    path = tmp_path / f"ImageClassifier_{variant}.mlpackage"
    path.write_bytes(b"package")
    entry = artifact_entry(path, tmp_path, format="coreml", precision=variant, kind="classifier")
    return {**entry, **stats, "gate": gate(variant, stats), "latency_ms": None, "weights_bytes": 7}


def test_an_entry_is_written_and_read_back_with_its_fields(tmp_path: Path) -> None:
    entry = ArtifactEntry.from_dict(coreml_copy(tmp_path, lost=5, images=625))
    assert entry.top1_drop_vs_pytorch == 0.8 and entry.top1_drop_vs_fp32 is None  # two drops, two fields
    assert entry.top1_images_lost_gained_vs_pytorch == [5, 0] and entry.top1_drop_p_value_vs_pytorch < 0.05
    assert entry.figures["weights_bytes"] == 7 and entry.figures["runtime"].startswith("reference executor")
    write_manifest(tmp_path, {"artifacts": [entry.to_dict()]})
    saved = json.loads((tmp_path / MANIFEST_NAME).read_text())["artifacts"][0]
    assert saved["top1_drop_vs_pytorch"] == 0.8 and saved["top1_drop_vs_fp32"] is None
    assert ArtifactEntry.from_dict(saved) == entry


def test_card_shows_a_failed_coreml_gate_as_failed_everywhere(tmp_path: Path) -> None:
    """A Core ML int8 copy 0.8 points below PyTorch at p < 0.05 fails its 0.5-point gate: every section of
    the card that names it says FAILED, none says it is within a gate."""
    entry, fp16 = coreml_copy(tmp_path, lost=5, images=625), coreml_copy(tmp_path, 0, 625, "fp16")
    assert not entry["gate"]["passed"] and fp16["gate"]["passed"]
    manifest = {
        "classes": CLASSES,
        "image_size": SIZE,
        "preprocess": DATA_CONFIG.to_dict(),
        "description": "test",
        "author": "a",
        "license": "l",
        "version": "1",
        "metadata": {"backbone": "mobilenet_v2"},
        "val_images": 625,
        "pytorch_val_top1": 1.0,
        "artifacts": [ArtifactEntry.from_dict(a).to_dict() for a in (fp16, entry)],
        "skipped": [],
        "errors": [{"artifact": "coreml_int8", "error": gate_problem("coreml_int8", entry["gate"])[0]}],
    }
    card = model_card(manifest)
    sections = [s for s in card.split("\n## ") if "ImageClassifier_int8.mlpackage" in s]
    assert len(sections) >= 2  # the artifacts' Core ML checks and the quantization section
    for section in sections:
        assert "FAILED" in section, section
    assert "within" not in card
    assert "top1_drop_vs_pytorch <= 0.5 or sign-test p >= 0.05: FAILED (measured 0.8, sign-test p" in card
