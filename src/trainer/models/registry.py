"""Build any backbone from its `model` config, with ImageNet weights and a head for the dataset.

Three families share one flow (build at the native 1000 classes, load weights, replace the head):
- `torchvision`: any torchvision classifier by name (`width_mult` carries the MobileNets' alpha);
- `timm`: any timm model by name;
- `mobilenet_v1`: the paper's MobileNetV1 with its full-convolution and shallow variants (timm layout).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from torch import nn

from trainer.models.mobilenet_v1 import build_mobilenet_v1
from trainer.models.weights import PretrainedWeightsError, load_matching, read_state_dict

log = logging.getLogger(__name__)

# torchvision builders whose `width_mult` is the MobileNet width multiplier alpha.
_TV_ALPHA_MODELS = {"mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"}
_MAX_ALPHA = 1.4


@dataclass
class Backbone:
    """A classifier plus what the rest of the pipeline needs to know about it."""

    model: nn.Module
    head_name: str  # dotted module path of the classifier layer (trained first when freezing)
    data_config: dict[str, Any]  # its pretrained config: mean, std, crop_pct, interpolation, crop_mode
    loaded_tensors: int  # backbone tensors copied from pretrained weights (0 = from scratch)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.model.get_submodule(self.head_name).parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        head = {id(p) for p in self.head_parameters()}
        return [p for p in self.model.parameters() if id(p) not in head]


def _pretrained_mode(value: Any) -> str | bool:
    """`model.pretrained` is true, false, or a path to a local state_dict."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return str(value)


def _ways_out(wanted: str) -> str:
    return (
        f"{wanted}. Either set model.pretrained=false to train from scratch, or "
        "model.pretrained=/path/to/weights.pth (or .safetensors) to load a local state_dict."
    )


def find_head(model: nn.Module) -> str:
    """Dotted name of the final classifier layer: the last Linear, else the last Conv2d (SqueezeNet)."""
    for kind in (nn.Linear, nn.Conv2d):
        names = [name for name, m in model.named_modules() if isinstance(m, kind)]
        if names:
            return names[-1]
    raise ValueError(f"cannot find a classifier layer in {type(model).__name__}")


def replace_head(model: nn.Module, head_name: str, num_classes: int, dropout: float | None) -> None:
    """Swap the classifier for one with `num_classes` outputs; set the dropout feeding it."""
    parent_name, _, attr = head_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding)
    if dropout is not None:
        siblings = [m for m in parent.children() if isinstance(m, nn.Dropout)]
        for m in siblings:
            m.p = dropout
        if not siblings and dropout > 0:
            new = nn.Sequential(nn.Dropout(dropout), new)
    setattr(parent, attr, new)


def _check_alpha(cfg: Any, supports_alpha: bool) -> float:
    try:
        alpha = 1.0 if cfg.get("alpha") is None else float(cfg.alpha)
    except (TypeError, ValueError):
        raise ValueError(
            f"model.alpha={cfg.alpha!r} is not a number: allowed a width multiplier in (0, {_MAX_ALPHA}]. "
            "Example: model.alpha=0.5"
        ) from None
    if supports_alpha and not 0 < alpha <= _MAX_ALPHA:
        raise ValueError(
            f"model.alpha={alpha} must be in (0, {_MAX_ALPHA}] (width multiplier). Example: model.alpha=0.5"
        )
    if not supports_alpha and alpha != 1.0:
        raise ValueError(
            f"model.alpha={alpha} is only supported by the MobileNets, not {cfg.name}; leave it at 1.0"
        )
    return alpha


def check_model_config(cfg: Any) -> None:
    """Check model.impl, .name, .alpha and a .pretrained path, without building or downloading anything."""
    if cfg.impl not in _FAMILIES:
        raise ValueError(f"model.impl={cfg.impl!r} is unknown; use one of {sorted(_FAMILIES)}")
    if cfg.impl == "torchvision" and cfg.name not in torchvision.models.list_models(
        module=torchvision.models
    ):
        raise ValueError(
            f"model.name={cfg.name!r} is not a torchvision classifier; see torchvision.models.list_models(), "
            "e.g. model.name=mobilenet_v3_small"
        )
    if cfg.impl == "timm" and not timm.is_model(cfg.name):
        raise ValueError(
            f"model.name={cfg.name!r} is not a timm model; see timm.list_models(), e.g. convnext_atto"
        )
    supports = cfg.impl == "mobilenet_v1" or (cfg.impl == "torchvision" and cfg.name in _TV_ALPHA_MODELS)
    _check_alpha(cfg, supports)
    pretrained = _pretrained_mode(cfg.get("pretrained"))
    if isinstance(pretrained, str) and not Path(pretrained).expanduser().is_file():
        raise PretrainedWeightsError(_ways_out(f"model.pretrained={pretrained}: no such file"))


def _build_torchvision(
    cfg: Any, pretrained: str | bool
) -> tuple[nn.Module, dict[str, torch.Tensor] | None, str]:
    name = cfg.name
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(
            f"model.name={name!r} is not a torchvision classifier; see torchvision.models.list_models()"
        )
    alpha = _check_alpha(cfg, name in _TV_ALPHA_MODELS)
    kwargs: dict[str, Any] = {}
    if name in _TV_ALPHA_MODELS:
        kwargs["width_mult"] = alpha
    if name.startswith("efficientnet") and cfg.get("drop_path") is not None:
        kwargs["stochastic_depth_prob"] = float(cfg.drop_path)
    if name == "inception_v3":
        kwargs.update(aux_logits=False, init_weights=False, transform_input=pretrained is not False)
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    state, source = None, "random init"
    if pretrained is True:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        if alpha != 1.0:
            raise PretrainedWeightsError(
                _ways_out(
                    f"torchvision publishes no ImageNet weights for {name} "
                    f"with model.alpha={alpha} (only 1.0)"
                )
            )
        try:
            state = weights.get_state_dict(progress=True, check_hash=True)
        except Exception as exc:
            raise PretrainedWeightsError(
                _ways_out(
                    f"could not download ImageNet weights {weights} for {name} from {weights.url} "
                    f"({type(exc).__name__}: {exc}); with no network, put the file in "
                    f"{torch.hub.get_dir()}/checkpoints/"
                )
            ) from exc
        source = str(weights)
    return model, state, source


def _build_timm(cfg: Any, pretrained: str | bool) -> tuple[nn.Module, dict[str, torch.Tensor] | None, str]:
    _check_alpha(cfg, False)
    kwargs = {"drop_rate": float(cfg.get("dropout") or 0.0)}
    if cfg.get("drop_path") is not None:
        kwargs["drop_path_rate"] = float(cfg.drop_path)
    try:
        model = timm.create_model(cfg.name, pretrained=pretrained is True, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ValueError(f"model.name={cfg.name!r} is not a timm model; see timm.list_models()") from exc
        raise
    except Exception as exc:  # hub/network errors differ by huggingface_hub version
        raise PretrainedWeightsError(
            _ways_out(
                f"could not download ImageNet weights for timm model {cfg.name} ({type(exc).__name__}: {exc})"
            )
        ) from exc
    return model, None, f"timm pretrained {cfg.name}" if pretrained is True else "random init"


def _build_mobilenet_v1(
    cfg: Any, pretrained: str | bool
) -> tuple[nn.Module, dict[str, torch.Tensor] | None, str]:
    alpha = _check_alpha(cfg, True)
    try:
        model = build_mobilenet_v1(
            alpha=alpha,
            conv=cfg.get("conv", "separable"),
            shallow=bool(cfg.get("shallow", False)),
            pretrained=pretrained is True,
            drop_rate=float(cfg.get("dropout") or 0.0),
        )
    except ValueError:
        raise
    except Exception as exc:
        raise PretrainedWeightsError(
            _ways_out(
                f"could not download timm's mobilenetv1_100 ImageNet weights ({type(exc).__name__}: {exc})"
            )
        ) from exc
    return model, None, "timm pretrained mobilenetv1_100" if pretrained is True else "random init"


_FAMILIES = {"torchvision": _build_torchvision, "timm": _build_timm, "mobilenet_v1": _build_mobilenet_v1}


def _data_config(model: nn.Module, cfg: Any) -> dict[str, Any]:
    """The backbone's own preprocessing (DataConfig.resolve adds the run's size): timm's pretrained config,
    torchvision's ImageNet defaults."""
    if cfg.impl == "torchvision":
        base = {
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
            "crop_pct": 0.875,
            "interpolation": "bilinear",
            "crop_mode": "center",
        }
    else:
        resolved = timm.data.resolve_data_config({}, model=model)
        base = {k: resolved[k] for k in ("mean", "std", "crop_pct", "interpolation", "crop_mode")}
    return {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in base.items()}


def build_backbone(cfg: Any, num_classes: int) -> Backbone:
    """Build `cfg` (the `model` config node) with a fresh `num_classes` head and the requested weights."""
    if cfg.impl not in _FAMILIES:
        raise ValueError(f"model.impl={cfg.impl!r} is unknown; use one of {sorted(_FAMILIES)}")
    pretrained = _pretrained_mode(cfg.pretrained)
    model, state, source = _FAMILIES[cfg.impl](cfg, pretrained)
    head_name = find_head(model)
    loaded = 0
    if isinstance(pretrained, str):
        state, source = read_state_dict(pretrained), pretrained
    if state is not None:
        loaded = load_matching(model, state, head_name, source)
    elif pretrained is True:
        loaded = sum(1 for k in model.state_dict() if not k.startswith(head_name))
        log.info("Loaded %d backbone tensors from %s", loaded, source)
    else:
        log.warning("Training %s from scratch (model.pretrained=false)", cfg.name)
    if hasattr(model, "reset_classifier"):  # timm models know their own head
        model.reset_classifier(num_classes)
        head_name = _timm_head_name(model)
    else:
        dropout = None if cfg.get("dropout") is None else float(cfg.dropout)
        replace_head(model, head_name, num_classes, dropout)
        head_name = find_head(model)
    return Backbone(model, head_name, _data_config(model, cfg), loaded)


def headless_copy(backbone: Backbone) -> nn.Module:
    """A copy of the model that outputs pooled embeddings instead of class scores (for export)."""
    model = copy.deepcopy(backbone.model).eval()
    parent_name, _, attr = backbone.head_name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, nn.Identity())
    return model


def _timm_head_name(model: nn.Module) -> str:
    head = model.get_classifier()
    return next(name for name, m in model.named_modules() if m is head)
