"""Load pretrained weights safely and say exactly what was loaded.

User files are read without executing pickle code (`torch.load(weights_only=True)` or safetensors). Tensors
are matched by name and shape; the classifier head is left out because it is replaced for the dataset.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from trainer.utils.files import check_zip_sizes

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_PREFIXES = ("module.", "model.", "backbone.")


class PretrainedWeightsError(RuntimeError):
    """The weights asked for by `model.pretrained` cannot be had; the message names both ways out."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a `.pth`/`.pt`/`.bin`/`.safetensors` state_dict (or a checkpoint wrapping one) without pickle."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(f"model.pretrained={path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            check_zip_sizes(path)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainedWeightsError(
            f"model.pretrained={path} could not be read as a state_dict ({type(exc).__name__}: {exc}). "
            "Save plain tensors: torch.save(model.state_dict(), path) or safetensors."
        ) from exc
    while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict):
        raise PretrainedWeightsError(
            f"model.pretrained={path} holds a {type(state).__name__}, not a state_dict"
        )
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for prefix in _PREFIXES:
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], head_prefix: str, source: str) -> int:
    """Copy every backbone tensor of `state` whose name and shape match `model`; return how many.

    Fewer than 90% of the backbone's tensors matching means the file is for another architecture or
    layout, which must stop the run rather than train a half-random network.
    """
    own = model.state_dict()
    backbone_keys = [k for k in own if not k.startswith(head_prefix)]
    matched = {k: state[k] for k in backbone_keys if k in state and state[k].shape == own[k].shape}
    if len(matched) < 0.9 * len(backbone_keys):
        wrong_shape = [k for k in backbone_keys if k in state and state[k].shape != own[k].shape]
        example = backbone_keys[0] if backbone_keys else "?"
        raise PretrainedWeightsError(
            f"weights from {source} do not fit this model: {len(matched)} of {len(backbone_keys)} backbone "
            f"tensors match by name and shape ({len(wrong_shape)} differ in shape, e.g. {wrong_shape[:2]}). "
            f"The file must be a state_dict in the backbone's native layout (names like {example!r}) "
            "for the same architecture and model.alpha."
        )
    model.load_state_dict(matched, strict=False)
    log.info("Loaded %d/%d backbone tensors from %s", len(matched), len(backbone_keys), source)
    return len(matched)
