"""The model families a `model` config names with `_target_`: each checks its settings and builds its network.

A family builds the network at ImageNet's 1000 classes with its own weights (or none); `registry` then loads
a local state_dict if asked and replaces the head. A new family is one class here and one `conf/model` file.
- `TorchvisionFamily`: any torchvision classifier by name (`width_mult` carries the MobileNets' alpha);
- `TimmFamily`: any timm model by name;
- `MobileNetV1Family`: the paper's MobileNetV1 with its full-convolution and shallow variants (timm layout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from torch import nn

from trainer.models.mobilenet_v1 import build_mobilenet_v1
from trainer.models.weights import PretrainedWeightsError

MAX_ALPHA = 1.4
IMAGENET_DATA_CONFIG = {
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "interpolation": "bilinear",
    "crop_mode": "center",
}
# What a family builds: the network, the weights to load into it (or None) and where they came from.
Built = tuple[nn.Module, dict[str, torch.Tensor] | None, str]


def pretrained_mode(value: Any) -> str | bool:
    """`model.pretrained` is true, false, or a path to a local state_dict."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return str(value)


def ways_out(wanted: str) -> str:
    return (
        f"{wanted}. Either set model.pretrained=false to train from scratch, or "
        "model.pretrained=/path/to/weights.pth (or .safetensors) to load a local state_dict."
    )


class ModelFamily:
    """The `model` settings every family shares; subclasses say which names exist and how to build them."""

    def __init__(
        self,
        name: str,
        alpha: float | None = None,
        pretrained: bool | str = True,
        dropout: float | None = None,
        drop_path: float | None = None,
    ) -> None:
        self.name = name
        self.alpha = alpha
        self.pretrained = pretrained_mode(pretrained)
        self.dropout = None if dropout is None else float(dropout)
        self.drop_path = None if drop_path is None else float(drop_path)

    def supports_alpha(self) -> bool:
        return False

    def check_name(self) -> None:
        """Raise ValueError when `name` is not a network of this family."""

    def build(self) -> Built:
        raise NotImplementedError

    def data_config(self, model: nn.Module) -> dict[str, Any]:
        """The network's own preprocessing: timm's pretrained config (torchvision: ImageNet's defaults)."""
        resolved = timm.data.resolve_data_config({}, model=model)
        return {k: resolved[k] for k in IMAGENET_DATA_CONFIG}

    def checked_alpha(self) -> float:
        """The width multiplier, checked against what this family supports."""
        try:
            alpha = 1.0 if self.alpha is None else float(self.alpha)
        except (TypeError, ValueError):
            raise ValueError(
                f"model.alpha={self.alpha!r} is not a number: allowed a width multiplier in "
                f"(0, {MAX_ALPHA}]. Example: model.alpha=0.5"
            ) from None
        if self.supports_alpha() and not 0 < alpha <= MAX_ALPHA:
            raise ValueError(
                f"model.alpha={alpha} must be in (0, {MAX_ALPHA}] (width multiplier). "
                "Example: model.alpha=0.5"
            )
        if not self.supports_alpha() and alpha != 1.0:
            raise ValueError(
                f"model.alpha={alpha} is only supported by the MobileNets, not {self.name}; leave it at 1.0"
            )
        return alpha

    def check(self) -> None:
        """Check the name, alpha and a `pretrained` path without building or downloading anything."""
        self.check_name()
        self.checked_alpha()
        if isinstance(self.pretrained, str) and not Path(self.pretrained).expanduser().is_file():
            raise PretrainedWeightsError(ways_out(f"model.pretrained={self.pretrained}: no such file"))


class TorchvisionFamily(ModelFamily):
    """Any torchvision classifier by name; ImageNet weights through torchvision's weight enums."""

    ALPHA_MODELS = frozenset({"mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"})  # width_mult

    def supports_alpha(self) -> bool:
        return self.name in self.ALPHA_MODELS

    def check_name(self) -> None:
        if self.name not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(
                f"model.name={self.name!r} is not a torchvision classifier; see "
                "torchvision.models.list_models(), e.g. model.name=mobilenet_v3_small"
            )

    def data_config(self, model: nn.Module) -> dict[str, Any]:
        return dict(IMAGENET_DATA_CONFIG)

    def build(self) -> Built:
        self.check_name()
        name, alpha = self.name, self.checked_alpha()
        kwargs: dict[str, Any] = {}
        if self.supports_alpha():
            kwargs["width_mult"] = alpha
        if name.startswith("efficientnet") and self.drop_path is not None:
            kwargs["stochastic_depth_prob"] = self.drop_path
        if name == "inception_v3":
            kwargs.update(aux_logits=False, init_weights=False, transform_input=self.pretrained is not False)
        model = torchvision.models.get_model(name, weights=None, **kwargs)
        if self.pretrained is not True:
            return model, None, "random init"
        weights = torchvision.models.get_model_weights(name).DEFAULT
        if alpha != 1.0:
            raise PretrainedWeightsError(
                ways_out(
                    f"torchvision publishes no ImageNet weights for {name} "
                    f"with model.alpha={alpha} (only 1.0)"
                )
            )
        try:
            state = weights.get_state_dict(progress=True, check_hash=True)
        except Exception as exc:
            raise PretrainedWeightsError(
                ways_out(
                    f"could not download ImageNet weights {weights} for {name} from {weights.url} "
                    f"({type(exc).__name__}: {exc}); with no network, put the file in "
                    f"{torch.hub.get_dir()}/checkpoints/"
                )
            ) from exc
        return model, state, str(weights)


class TimmFamily(ModelFamily):
    """Any timm model by name, with timm's pretrained weights."""

    def check_name(self) -> None:
        if not timm.is_model(self.name):
            raise ValueError(
                f"model.name={self.name!r} is not a timm model; see timm.list_models(), e.g. convnext_atto"
            )

    def build(self) -> Built:
        self.checked_alpha()
        kwargs = {"drop_rate": self.dropout or 0.0}
        if self.drop_path is not None:
            kwargs["drop_path_rate"] = self.drop_path
        try:
            model = timm.create_model(self.name, pretrained=self.pretrained is True, **kwargs)
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ValueError(
                    f"model.name={self.name!r} is not a timm model; see timm.list_models()"
                ) from exc
            raise
        except Exception as exc:  # hub/network errors differ by huggingface_hub version
            raise PretrainedWeightsError(
                ways_out(
                    f"could not download ImageNet weights for timm model {self.name} "
                    f"({type(exc).__name__}: {exc})"
                )
            ) from exc
        return model, None, f"timm pretrained {self.name}" if self.pretrained is True else "random init"


class MobileNetV1Family(ModelFamily):
    """The paper's MobileNetV1: `conv=full` is its full-convolution baseline, `shallow` drops five layers."""

    def __init__(
        self, name: str = "mobilenet_v1", conv: str = "separable", shallow: bool = False, **shared: Any
    ):
        super().__init__(name, **shared)
        self.conv = conv
        self.shallow = bool(shallow)

    def supports_alpha(self) -> bool:
        return True

    def build(self) -> Built:
        try:
            model = build_mobilenet_v1(
                alpha=self.checked_alpha(),
                conv=self.conv,
                shallow=self.shallow,
                pretrained=self.pretrained is True,
                drop_rate=self.dropout or 0.0,
            )
        except ValueError:
            raise
        except Exception as exc:
            raise PretrainedWeightsError(
                ways_out(
                    "could not download timm's mobilenetv1_100 ImageNet weights "
                    f"({type(exc).__name__}: {exc})"
                )
            ) from exc
        source = "timm pretrained mobilenetv1_100" if self.pretrained is True else "random init"
        return model, None, source
