"""The metadata every artifact carries, built once per export from the class names, the data config, the
run's provenance and the export settings, and written into each format's own store: Core ML user-defined
metadata, ONNX `metadata_props`, the LiteRT metadata entry, TorchScript `_extra_files` and an ExecuTorch
constant method (the last three as JSON named METADATA_NAME).

The keys are the same everywhere: labels, the preprocessing (resolution, mean, std, preprocess), author,
license, version, description and the provenance. The run's val accuracies are PyTorch's, so they are
stored as `pytorch_val_*`: an artifact's own figures are measured on it and added by its format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainer.data.data_config import DataConfig
from trainer.export.settings import ExportSettings

METADATA_NAME = "trainer"  # the extra file, metadata entry or method that holds the metadata as JSON


@dataclass(frozen=True)
class ArtifactMetadata:
    labels: tuple[str, ...]
    data_config: DataConfig
    author: str
    license: str
    version: str
    description: str
    provenance: Mapping[str, Any]  # backbone, dataset, config hash, the run's val figures, ...

    @classmethod
    def build(
        cls,
        classes: Sequence[str],
        data_config: DataConfig,
        provenance: Mapping[str, Any],
        settings: ExportSettings,
    ) -> ArtifactMetadata:
        return cls(
            labels=tuple(classes),
            data_config=data_config,
            author=settings.author,
            license=settings.license,
            version=settings.version,
            description=settings.description,
            provenance=dict(provenance),
        )

    def to_dict(self) -> dict[str, Any]:
        """The key/value form every format stores (JSON-serializable values)."""
        config = self.data_config
        return {
            "labels": list(self.labels),
            "resolution": config.size,
            "mean": list(config.mean),
            "std": list(config.std),
            "preprocess": config.to_dict(),
            "author": self.author,
            "license": self.license,
            "version": self.version,
            "description": self.description,
            **{f"pytorch_{k}" if k.startswith("val_") else k: v for k, v in self.provenance.items()},
        }


def as_strings(metadata: Mapping[str, Any]) -> dict[str, str]:
    """String values for stores that hold only strings (ONNX metadata_props): strings as they are, the rest
    as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in metadata.items()}


def as_json(metadata: Mapping[str, Any]) -> str:
    """The whole metadata as one JSON text (TorchScript extra file, ExecuTorch method, LiteRT entry)."""
    return json.dumps(dict(metadata), ensure_ascii=False, default=str)
