"""MobileNetV1 (Howard et al. 2017, arXiv:1704.04861) and the paper's comparison variants.

Built with timm's EfficientNet builder so the result is an ordinary timm model: the standard
alpha=1.0 network has exactly the module names and shapes of timm's ``mobilenetv1_100`` and can load
its published ImageNet weights.
"""

from functools import partial
from typing import Literal

import torch.nn as nn
from timm.layers import get_act_layer
from timm.models import build_model_with_cfg, get_pretrained_cfg
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.efficientnet import EfficientNet

__all__ = ["build_mobilenet_v1"]

ConvKind = Literal["separable", "full"]

# Paper Table 1 after the stem, one row per timm stage: (repeats, stride of first block, out channels).
# The table's last "Conv dw / s2" on 7x7 input is a known typo; it is stride 1, as in timm and TF slim.
_STAGES: tuple[tuple[int, int, int], ...] = ((1, 1, 64), (2, 2, 128), (2, 2, 256), (6, 2, 512), (2, 2, 1024))
_SHALLOW_STAGE = 3  # the 28->14 stage; shallow MobileNet keeps only its first (strided) block
_STEM_CHANNELS = 32
_MAX_ALPHA = 1.4

# 'dsa' = depthwise-separable with BN+act after both convs and no residual (paper Fig. 3, right);
# 'cn' = standard conv + BN + act (paper Fig. 3, left), used for the full-convolution baseline.
_BLOCK_TYPE = {"separable": "dsa", "full": "cn"}

_TIMM_VARIANT = "mobilenetv1_100"
_TIMM_TAG = "ra4_e3600_r224_in1k"
# Keys of a pretrained cfg that point at downloadable weights; cleared for variants without weights.
_WEIGHT_SOURCE_KEYS = ("hf_hub_id", "hf_hub_filename", "url", "file")


def _arch_def(conv: ConvKind, shallow: bool) -> list[list[str]]:
    """timm arch strings for the 13 (or 8 if shallow) layers between stem and pooling."""
    block = _BLOCK_TYPE[conv]
    arch = []
    for idx, (repeats, stride, channels) in enumerate(_STAGES):
        repeats = 1 if shallow and idx == _SHALLOW_STAGE else repeats
        arch.append([f"{block}_r{repeats}_k3_s{stride}_c{channels}"])
    return arch


def _variant_name(alpha: float, conv: ConvKind, shallow: bool) -> str:
    """timm-style name, e.g. mobilenetv1_075 or mobilenetv1_full_100, recorded as the cfg architecture."""
    parts = ["mobilenetv1"] + (["full"] if conv == "full" else []) + (["shallow"] if shallow else [])
    return "_".join(parts) + f"_{round(alpha * 100):03d}"


def _validate(alpha: float, conv: str, shallow: bool, pretrained: bool) -> None:
    """Fail early with the config key to change, before any weights are allocated or fetched."""
    if not 0.0 < alpha <= _MAX_ALPHA:
        raise ValueError(f"model.alpha must be in (0, {_MAX_ALPHA}], got {alpha}")
    if conv not in _BLOCK_TYPE:
        raise ValueError(f"model.conv must be one of {sorted(_BLOCK_TYPE)}, got {conv!r}")
    if pretrained and (alpha != 1.0 or conv != "separable" or shallow):
        raise ValueError(
            f"No published weights exist for MobileNetV1 alpha={alpha}, conv={conv}, shallow={shallow}; "
            "only alpha=1.0 separable (not shallow) has them. Set model.pretrained=false to train from "
            "scratch, or model.pretrained=/path/to/weights.pth to load your own checkpoint."
        )


def build_mobilenet_v1(
    alpha: float = 1.0,
    conv: ConvKind = "separable",
    shallow: bool = False,
    num_classes: int = 1000,
    drop_rate: float = 0.0,
    pretrained: bool = False,
) -> nn.Module:
    """Build MobileNetV1 as a timm EfficientNet.

    alpha is the paper's width multiplier (channels rounded to multiples of 8 like timm, which leaves
    the paper's 1/.75/.5/.25 counts exact); conv="full" swaps every separable layer for a standard 3x3
    conv (Table 4); shallow=True drops the five 14x14x512 separable layers (Table 5). Activation is
    ReLU6 as in the TF reference and timm's weights (the paper says ReLU; it changes no count).
    """
    _validate(alpha, conv, shallow, pretrained)
    standard = alpha == 1.0 and conv == "separable" and not shallow
    variant = _TIMM_VARIANT if standard else _variant_name(alpha, conv, shallow)
    # Same preprocessing (mean/std/crop) for every variant; only the standard one keeps a weight source.
    overlay = {} if standard else dict.fromkeys(_WEIGHT_SOURCE_KEYS) | {"architecture": variant, "tag": None}
    return build_model_with_cfg(
        EfficientNet,
        variant,
        pretrained,
        pretrained_cfg=get_pretrained_cfg(f"{_TIMM_VARIANT}.{_TIMM_TAG}").to_dict(),
        pretrained_cfg_overlay=overlay,
        block_args=decode_arch_def(_arch_def(conv, shallow)),
        num_features=0,  # no 1x1 head conv: pooling follows the last separable layer directly
        stem_size=_STEM_CHANNELS,
        round_chs_fn=partial(round_channels, multiplier=alpha),
        norm_layer=nn.BatchNorm2d,
        act_layer=get_act_layer("relu6"),
        num_classes=num_classes,
        drop_rate=drop_rate,
    )
