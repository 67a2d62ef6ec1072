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


def test_mobilenet_v2_finetune_reaches_90_percent(tmp_path):
    cfg = compose_config(
        [
            "dataset=folder",
            f"dataset.root={DATA}",
            "dataset.image_size=128",
            "model=mobilenet_v2",
            f"model.pretrained={WEIGHTS}",
            "trainer.max_epochs=3",
            "export.enabled=false",
        ],
        output_dir=str(tmp_path / "run"),
    )
    metrics = train(cfg)
    print(json.dumps({k: metrics[k] for k in ("val_top1", "train_images_per_sec", "train_seconds")}))
    assert metrics["pretrained_tensors_loaded"] == 312
    assert metrics["val_images"] == 153 and metrics["classes"] == ["ants", "bees"]
    assert metrics["val_top1"] >= 0.90
