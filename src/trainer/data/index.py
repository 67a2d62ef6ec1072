"""The one shape every dataset source produces: class names plus (path, label) lists per split.

Sources (a class folder, Imagenette, Tiny ImageNet, ...) differ only in how they find their files; once they
return a `DatasetIndex`, scanning, transforms and loading are shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Sample = tuple[str, int]


@dataclass
class DatasetIndex:
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    name: str = "dataset"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


DatasetBuilder = Callable[[Any], DatasetIndex]
_SOURCES: dict[str, DatasetBuilder] = {}


def register_source(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Register `fn(cfg.dataset) -> DatasetIndex` under `dataset.source` name."""

    def wrap(fn: DatasetBuilder) -> DatasetBuilder:
        _SOURCES[name] = fn
        return fn

    return wrap


def build_index(cfg: Any) -> DatasetIndex:
    """Build the index for `cfg.dataset` (an OmegaConf node with a `source` key)."""
    from trainer.data import sources  # noqa: F401  (registers the built-in sources)

    name = cfg.source
    if name not in _SOURCES:
        raise ValueError(f"dataset.source={name!r} is unknown; choose one of {sorted(_SOURCES)}")
    return _SOURCES[name](cfg)
