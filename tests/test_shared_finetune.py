"""Real fine-tune on real photos: MobileNetV2 from real ImageNet weights on ants vs bees (needs ../shared)."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED

from trainer.cli import compose_config
from trainer.training.run import train

WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_tv.pth"
DATA = SHARED / "data" / "hymenoptera"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (WEIGHTS.exists() and DATA.exists()), reason="../shared is not present"),
]


def _artifact(manifest: dict, path: str) -> dict:
    return next(a for a in manifest["artifacts"] if a["path"] == path)


def test_mobilenet_v2_finetune_reaches_90_percent_and_exports_agree(tmp_path):
    """The issue's acceptance run, then every artifact checked on the 153 real val photos."""
    cfg = compose_config(
        [
            "dataset=folder",
            f"dataset.root={DATA}",
            "dataset.image_size=128",
            "model=mobilenet_v2",
            f"model.pretrained={WEIGHTS}",
            "trainer.max_epochs=3",
            "threads=1",  # threads split reductions differently: the result must not depend on the core count
        ],
        output_dir=str(tmp_path / "run"),
    )
    metrics = train(cfg)
    print(json.dumps({k: metrics[k] for k in ("val_top1", "train_images_per_sec", "train_seconds")}))
    assert metrics["pretrained_tensors_loaded"] == 312
    assert metrics["val_images"] == 153 and metrics["classes"] == ["ants", "bees"]
    assert metrics["val_top1"] >= 0.90

    manifest = json.loads((tmp_path / "run" / "export" / "manifest.json").read_text())
    print(
        json.dumps(
            [
                {k: a.get(k) for k in ("path", "top1_agreement", "val_top1", "size_bytes")}
                for a in manifest["artifacts"]
            ]
        )
    )
    assert manifest["errors"] == [] and manifest["classes"] == ["ants", "bees"]
    for fp32 in ("model_torchscript.pt", "model.onnx"):
        assert _artifact(manifest, fp32)["top1_agreement"] >= 0.995
    int8 = _artifact(manifest, "model_int8.onnx")
    # within a point of fp32, or a drop of a photo or two that the sign test cannot tell from chance
    assert int8["val_top1"] >= _artifact(manifest, "model.onnx")["val_top1"] - 0.01 or (
        int8["top1_drop_p_value"] >= 0.05
    )
    assert _artifact(manifest, "ImageClassifier_int8.mlpackage")["weights_ratio_vs_fp16"] <= 0.55
    assert _artifact(manifest, "ImageClassifier_palettize6.mlpackage")["weights_ratio_vs_fp16"] <= 0.45
