"""MobileNetV1 against the MobileNet paper (Howard et al. 2017) and timm's mobilenetv1 weights layout."""

import math

import pytest
import timm
import torch
from timm.data import resolve_data_config

from trainer.models.complexity import count_macs, count_params
from trainer.models.mobilenet_v1 import build_mobilenet_v1

REL_TOL = 0.02
PARAMS_ABS_TOL_M = 0.05  # the paper rounds parameter counts to 0.1M

# (builder kwargs, input resolution, paper mult-adds in millions, paper params in millions)
PAPER_ROWS = [
    pytest.param({"alpha": 1.0}, 224, 569, 4.2, id="table6-alpha1.00"),
    pytest.param({"alpha": 0.75}, 224, 325, 2.6, id="table6-alpha0.75"),
    pytest.param({"alpha": 0.5}, 224, 149, 1.3, id="table6-alpha0.50"),
    pytest.param({"alpha": 0.25}, 224, 41, 0.5, id="table6-alpha0.25"),
    pytest.param({}, 224, 569, 4.2, id="table7-res224"),
    pytest.param({}, 192, 418, 4.2, id="table7-res192"),
    pytest.param({}, 160, 290, 4.2, id="table7-res160"),
    pytest.param({}, 128, 186, 4.2, id="table7-res128"),
    pytest.param({"conv": "full"}, 224, 4866, 29.3, id="table4-full-conv"),
    pytest.param({"shallow": True}, 224, 307, 2.9, id="table5-shallow"),
]

VARIANTS = [
    pytest.param({}, id="standard"),
    pytest.param({"alpha": 0.25}, id="alpha0.25"),
    pytest.param({"conv": "full"}, id="full-conv"),
    pytest.param({"shallow": True}, id="shallow"),
]

# Paper Table 1: stem then each separable layer's pointwise output channels, at alpha=1.
PAPER_CHANNELS = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]


@pytest.mark.parametrize(("kwargs", "image_size", "paper_macs_m", "paper_params_m"), PAPER_ROWS)
def test_matches_paper(kwargs: dict, image_size: int, paper_macs_m: float, paper_params_m: float) -> None:
    model = build_mobilenet_v1(num_classes=1000, **kwargs)
    macs_m = count_macs(model, image_size) / 1e6
    params_m = count_params(model) / 1e6
    assert macs_m == pytest.approx(paper_macs_m, rel=REL_TOL)
    assert abs(params_m - paper_params_m) <= max(REL_TOL * paper_params_m, PARAMS_ABS_TOL_M)


@pytest.mark.parametrize("alpha", [1.0, 0.75, 0.5, 0.25])
def test_channels_are_paper_channels_times_alpha(alpha: float) -> None:
    model = build_mobilenet_v1(alpha=alpha)
    pointwise = [block.conv_pw.out_channels for stage in model.blocks for block in stage]
    assert [model.conv_stem.out_channels, *pointwise] == [int(c * alpha) for c in PAPER_CHANNELS]


@pytest.mark.parametrize(("alpha", "timm_name"), [(1.0, "mobilenetv1_100"), (1.25, "mobilenetv1_125")])
def test_state_dict_layout_equals_timm(alpha: float, timm_name: str) -> None:
    ours = build_mobilenet_v1(alpha=alpha).state_dict()
    theirs = timm.create_model(timm_name, pretrained=False).state_dict()
    assert list(ours) == list(theirs)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_standard_variant_points_at_timm_weights() -> None:
    cfg = build_mobilenet_v1().pretrained_cfg
    assert cfg["hf_hub_id"] == "timm/mobilenetv1_100.ra4_e3600_r224_in1k"


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_data_config_resolves(kwargs: dict) -> None:
    config = resolve_data_config({}, model=build_mobilenet_v1(**kwargs))
    assert config["mean"] == (0.5, 0.5, 0.5)
    assert config["std"] == (0.5, 0.5, 0.5)
    assert config["crop_pct"] == 0.875


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_forward_shape(kwargs: dict) -> None:
    model = build_mobilenet_v1(num_classes=7, drop_rate=0.2, **kwargs).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7)


@pytest.mark.parametrize("alpha", [0.0, -0.5, 1.41, 2.0, math.nan])
def test_alpha_out_of_range(alpha: float) -> None:
    with pytest.raises(ValueError, match=r"model\.alpha"):
        build_mobilenet_v1(alpha=alpha)


def test_unknown_conv_kind() -> None:
    with pytest.raises(ValueError, match=r"model\.conv"):
        build_mobilenet_v1(conv="grouped")  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{"alpha": 0.5}, {"conv": "full"}, {"shallow": True}])
def test_pretrained_only_for_published_variant(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="No published weights") as excinfo:
        build_mobilenet_v1(pretrained=True, **kwargs)
    assert "model.pretrained=false" in str(excinfo.value)
    assert "model.pretrained=/path/to/weights.pth" in str(excinfo.value)
