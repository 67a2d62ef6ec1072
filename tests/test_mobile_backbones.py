"""Every light backbone family converts to LiteRT and ExecuTorch (fp32) and runs in both runtimes.

Random init with BatchNorm statistics from a random batch (test_backbone_conversion's `lively`), 3 classes,
64 px, verified against PyTorch on two images. MobileNetV2 is covered by test_mobile_export's trained model;
the heavy ones (HEAVY) are left out to keep the suite's time (about 25 s of conversion per backbone on one
core). A converter that cannot convert a family
must be recorded in the manifest with its own error, and the other format must still export.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_backbone_conversion import BACKBONES, CHAOTIC, lively
from test_export import CLASSES, MEAN, STD, export_config, make_images

from trainer.data.data_config import DataConfig
from trainer.export.formats import FORMATS
from trainer.export.pipeline import export_all

MOBILE = ["litert", "executorch"]
MISSING = {name: FORMATS[name].missing() for name in MOBILE}
FILES = {"litert_fp32": "model.tflite", "executorch_fp32": "model.pte"}
HEAVY = {"resnet50", "inception_v3"}

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(any(MISSING.values()), reason=f"[mobile] extra not installed: {MISSING}"),
]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, int]]:
    return make_images(tmp_path_factory.mktemp("images"), per_class=1, seed=4)[:2]


@pytest.mark.parametrize(
    "name",
    [  # the fast loop (-m "not slow") converts squeezenet1_1 only; the full suite every light family
        pytest.param(name, marks=() if name == "squeezenet1_1" else pytest.mark.slow)
        for name in BACKBONES
        if name not in HEAVY | {"mobilenet_v2"}
    ],
)
def test_backbone_converts_for_android(name: str, images: list[tuple[str, int]], tmp_path: Path) -> None:
    torch.manual_seed(0)
    size = 64
    model = BACKBONES[name]().eval() if name in CHAOTIC else lively(BACKBONES[name](), size)
    cfg = export_config(
        formats=MOBILE,
        **{"litert.fp16": False, "litert.int8": False, "executorch.int8": False, "latency.runs": 1},
    )
    manifest = export_all(
        model,
        classes=CLASSES,
        data_config=DataConfig(
            size=size, interpolation="bilinear", crop_pct=1.0, crop_mode="center", mean=MEAN, std=STD
        ),
        out_dir=tmp_path / "export",
        cfg=cfg,
        calibration_paths=[],
        val_samples=images,
        provenance={"backbone": name},
    )
    errors = {e["artifact"]: e["error"] for e in manifest["errors"]}
    artifacts = {a["name"]: a for a in manifest["artifacts"]}
    for guard, file in FILES.items():
        if guard in errors:  # the converter's own message, and no file
            assert errors[guard] and file not in artifacts, guard
        else:
            assert artifacts[file]["top1_agreement"] == 1.0, file
            assert (tmp_path / "export" / file).stat().st_size > 0
    assert set(errors) <= set(FILES), errors
