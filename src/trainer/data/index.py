"""The one shape every dataset source produces: class names plus (path, label) lists per split.

Sources (a class folder, Imagenette, Tiny ImageNet, ...) differ only in how they find their files; once they
return a `DatasetIndex`, scanning, transforms and loading are shared. Each `conf/dataset/<name>.yaml` names
its source's builder in `dataset.source._target_`, so nothing here imports or registers the sources.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hydra.utils import instantiate

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


DatasetBuilder = Callable[[Any], DatasetIndex]  # the dataset's config node -> its index

# `dataset.source` as configs saved it before it named its builder with `_target_` (the run description in
# checkpoints written until then): each name and the builder it stood for.
_SAVED_SOURCE_NAMES = {
    "camera_scene": "trainer.data.sources.camera_scene.camera_scene",
    "demo": "trainer.data.sources.demo.demo_source",
    "folder": "trainer.data.sources.folder.folder_source",
    "imagenette": "trainer.data.sources.imagenette.imagenette",
    "imagewoof": "trainer.data.sources.imagenette.imagewoof",
    "stanford_dogs": "trainer.data.sources.stanford_dogs.stanford_dogs",
    "tiny_imagenet": "trainer.data.sources.tiny_imagenet.tiny_imagenet",
}


def source_builder(source: Any) -> DatasetBuilder:
    """The builder a `dataset.source` node names with `_target_` (and `_partial_: true`), imported by Hydra.

    A plain name is a config saved before sources were named this way; it still finds its builder.
    """
    if isinstance(source, str):
        if source not in _SAVED_SOURCE_NAMES:
            known = ", ".join(sorted(_SAVED_SOURCE_NAMES))
            raise ValueError(f"dataset.source={source!r} is unknown; choose one of {known}")
        source = {"_target_": _SAVED_SOURCE_NAMES[source], "_partial_": True}
    return instantiate(source)


def build_index(cfg: Any) -> DatasetIndex:
    """Build the index for `cfg.dataset` (an OmegaConf node): its `source` builder called with the node."""
    return source_builder(cfg.source)(cfg)
