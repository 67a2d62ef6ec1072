"""Every supported backbone family exports to TorchScript, ONNX and Core ML (fp16) at a small input size.

Random init, 3 classes, 64 px (inception_v3: 75 px, its minimum). The light models are also verified against
PyTorch on two images; the heavy ones (HEAVY) are converted and spec-checked only, which keeps the file at
about 1.5 minutes on two shared cores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from test_export import CLASSES, MEAN, STD, export_config, make_images
from torch import nn

from trainer.data.data_config import DataConfig
from trainer.export import export_all

tvm = torchvision.models
BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "mobilenet_v2": lambda: tvm.mobilenet_v2(num_classes=3),
    "mobilenet_v3_small": lambda: tvm.mobilenet_v3_small(num_classes=3),
    "mobilenet_v3_large": lambda: tvm.mobilenet_v3_large(num_classes=3),
    "efficientnet_b0": lambda: tvm.efficientnet_b0(num_classes=3),
    "resnet50": lambda: tvm.resnet50(num_classes=3),
    "squeezenet1_1": lambda: tvm.squeezenet1_1(num_classes=3),
    "inception_v3": lambda: tvm.inception_v3(num_classes=3, aux_logits=False, init_weights=False),
    "timm_efficientnet_lite0": lambda: timm.create_model(
        "efficientnet_lite0", pretrained=False, num_classes=3
    ),
    "timm_mobilenetv1_100": lambda: timm.create_model("mobilenetv1_100", pretrained=False, num_classes=3),
}
HEAVY = {"resnet50", "inception_v3"}  # convert + spec checks only: no val images, so no verification


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, int]]:
    return make_images(tmp_path_factory.mktemp("images"), per_class=1, seed=4)[:2]


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_exports_everywhere(name: str, images: list[tuple[str, int]], tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = BACKBONES[name]().eval()
    size = 75 if name == "inception_v3" else 64
    cfg = export_config(**{"onnx.int8": False, "coreml.quantize": ["fp16"], "latency.runs": 1})
    manifest = export_all(
        model,
        classes=CLASSES,
        data_config=DataConfig(
            size=size, interpolation="bilinear", crop_pct=1.0, crop_mode="center", mean=MEAN, std=STD
        ),
        out_dir=tmp_path / "export",
        cfg=cfg,
        calibration_paths=[],
        val_samples=[] if name in HEAVY else images,
        metadata={"backbone": name},
    )
    assert manifest["errors"] == []
    artifacts = {a["name"]: a for a in manifest["artifacts"]}
    assert set(artifacts) == {"model_torchscript.pt", "model.onnx", "ImageClassifier_fp16.mlpackage"}
    assert all((tmp_path / "export" / a["path"]).exists() for a in artifacts.values())
    if name not in HEAVY:
        assert (
            artifacts["model.onnx"]["top1_agreement"]
            == artifacts["model_torchscript.pt"]["top1_agreement"]
            == 1.0
        )
