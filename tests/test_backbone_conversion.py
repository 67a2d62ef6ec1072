"""Every supported backbone family exports to TorchScript, ONNX and Core ML (fp16) at a small input size.

Random init with BatchNorm statistics from a random batch (so outputs depend on the image), 3 classes, 64 px
(inception_v3: 75 px, its minimum). Core ML converts at fp32 and the reference executor runs the package
against PyTorch. Random networks amplify rounding too much for an fp16 gate to be fair to them: fp16, int8
and palettized packages (the same ops plus casts and constexpr weights) are measured in test_export on a
trained model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import timm
import torch
import torchvision
from test_export import CLASSES, MEAN, STD, export_config, make_images
from torch import nn

from trainer.data.data_config import DataConfig
from trainer.export.pipeline import export_all

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


# calibrated, efficientnet_b0's random squeeze-excite gating turns chaotic (fp32 ONNX differs from PyTorch by
# 100 logits): it keeps torchvision's initialisation, whose near-constant outputs test little
CHAOTIC = {"efficientnet_b0"}

pytestmark = pytest.mark.usefixtures("one_thread")


def normalized_pixels(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random 8-bit RGB pixels (N, 3, S, S) and their normalized float32 tensor."""
    pixels = np.random.default_rng(seed).integers(0, 256, (count, 3, size, size)).astype(np.float32)
    normalized = (pixels / 255.0 - np.reshape(MEAN, (1, 3, 1, 1))) / np.reshape(STD, (1, 3, 1, 1))
    return pixels, normalized.astype(np.float32)


def lively(model: nn.Module, size: int) -> nn.Module:
    """BatchNorm statistics taken from a random batch (everything else in eval mode), so that a randomly
    initialised network's features and logits depend on the image (with the default statistics most
    backbones output near-constant zeros). The batch is random pixels, like the images checked below."""
    torch.manual_seed(0)
    model.eval()  # dropout and stochastic depth off, as in the exported graph
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
            module.train()
    with torch.no_grad():
        model(torch.from_numpy(normalized_pixels(8, size, seed=1)[1]))
    return model.eval()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, int]]:
    return make_images(tmp_path_factory.mktemp("images"), per_class=1, seed=4)[:2]


# The fast loop (-m "not slow") converts the two cheapest families; the full suite converts every one.
FAST = {"mobilenet_v2", "squeezenet1_1"}


@pytest.fixture(
    scope="module",
    params=[pytest.param(name, marks=() if name in FAST else pytest.mark.slow) for name in BACKBONES],
)
def exported(request: pytest.FixtureRequest, images: list[tuple[str, int]], tmp_path_factory) -> dict:
    """One backbone exported to every format and verified on two images: the fp32 Core ML package through the
    reference executor, whose figures must match PyTorch's like ONNX's."""
    name = request.param
    torch.manual_seed(0)
    size = 75 if name == "inception_v3" else 64
    model = BACKBONES[name]().eval() if name in CHAOTIC else lively(BACKBONES[name](), size)
    cfg = export_config(**{"onnx.int8": False, "coreml.quantize": ["fp32"], "latency.runs": 1})
    out_dir = tmp_path_factory.mktemp(name) / "export"
    manifest = export_all(
        model,
        classes=CLASSES,
        data_config=DataConfig(
            size=size, interpolation="bilinear", crop_pct=1.0, crop_mode="center", mean=MEAN, std=STD
        ),
        out_dir=out_dir,
        cfg=cfg,
        calibration_paths=[],
        val_samples=images,
        provenance={"backbone": name},
    )
    return {"name": name, "model": model, "size": size, "manifest": manifest, "out": out_dir}


def test_backbone_exports_everywhere(exported: dict) -> None:
    manifest, out = exported["manifest"], exported["out"]
    assert manifest["errors"] == []
    artifacts = {a["name"]: a for a in manifest["artifacts"]}
    assert set(artifacts) == {
        "model_torchscript.pt",
        "model.onnx",
        "ImageClassifier_fp32.mlpackage",
    }
    assert all((out / a["path"]).exists() for a in artifacts.values())
    assert (
        artifacts["model.onnx"]["top1_agreement"]
        == artifacts["model_torchscript.pt"]["top1_agreement"]
        == 1.0
    )
