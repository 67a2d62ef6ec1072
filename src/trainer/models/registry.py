"""Build the classifier a `model` config describes: its family's network, the requested weights, a new head.

The family (`_target_` in `conf/model/*.yaml`, see `families`) builds the network at its native 1000 classes
with its ImageNet weights; a local state_dict (`model.pretrained=/path`) is loaded here, then the head is
replaced by one for the dataset.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hydra.utils import instantiate
from torch import nn

from trainer.models.families import ModelFamily
from trainer.models.weights import load_matching, read_state_dict

log = logging.getLogger(__name__)


@dataclass
class Classifier:
    """The whole network (feature extractor + head) and what the rest of the pipeline needs to know of it."""

    model: nn.Module
    head_name: str  # dotted module path of the classifier layer (trained first when freezing)
    data_config: dict[str, Any]  # its pretrained config: mean, std, crop_pct, interpolation, crop_mode
    loaded_tensors: int  # feature-extractor tensors copied from pretrained weights (0 = from scratch)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.model.get_submodule(self.head_name).parameters())

    def feature_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the head's: the feature extractor that fine-tuning moves slowly or freezes."""
        head = {id(p) for p in self.head_parameters()}
        return [p for p in self.model.parameters() if id(p) not in head]


def model_family(cfg: Mapping[str, Any]) -> ModelFamily:
    """The family object of a `model` config node (its `_target_`), holding the node's settings."""
    family = instantiate(cfg)
    if not isinstance(family, ModelFamily):
        raise ValueError(f"model._target_={cfg.get('_target_')!r} is not a trainer.models.families class")
    return family


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


def build_classifier(cfg: Mapping[str, Any], num_classes: int, *, restoring: bool = False) -> Classifier:
    """Build `cfg` (the `model` config node) with a fresh `num_classes` head and the requested weights."""
    family = model_family(cfg)
    model, state, source = family.build()
    head_name = find_head(model)
    loaded = 0
    if isinstance(family.pretrained, str):
        state, source = read_state_dict(family.pretrained), family.pretrained
    if state is not None:
        loaded = load_matching(model, state, head_name, source)
    elif family.pretrained is True:
        loaded = sum(1 for k in model.state_dict() if not k.startswith(head_name))
        log.info("Loaded %d backbone tensors from %s", loaded, source)
    elif not restoring:  # weights about to come from a checkpoint (export, resume) are not "from scratch"
        log.warning("Training %s from scratch (model.pretrained=false)", family.name)
    if hasattr(model, "reset_classifier"):  # timm models know their own head
        model.reset_classifier(num_classes)
        head_name = _timm_head_name(model)
    else:
        replace_head(model, head_name, num_classes, family.dropout)
        head_name = find_head(model)
    data_config = {
        k: tuple(v) if isinstance(v, list | tuple) else v for k, v in family.data_config(model).items()
    }
    return Classifier(model, head_name, data_config, loaded)


def headless_copy(classifier: Classifier) -> nn.Module:
    """A copy of the model that outputs pooled embeddings instead of class scores (for export)."""
    model = copy.deepcopy(classifier.model).eval()
    parent_name, _, attr = classifier.head_name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, nn.Identity())
    return model


def _timm_head_name(model: nn.Module) -> str:
    head = model.get_classifier()
    return next(name for name, m in model.named_modules() if m is head)
