"""The table of export formats: one row per format, read by the export pipeline, its settings,
trainer-predict, the benchmark and the report.

Each row names the module that implements the format, with the same small interface: `export(job)` writes the
format's artifacts of `job.model`, verifies each on the val images and lists it in the job (or why not);
`load(path, manifest)` returns a predictor for one artifact (normalized NCHW float32 in, logits or
probabilities out) or raises RuntimeUnavailable; a `headless` row also has `export_headless(job, extractor,
reference)` for the feature extractor ((N, D) output checked against PyTorch's `reference`). The rows
only hold data, and modules are imported when used, so reading the table costs no heavy import. Adding a
format means adding one module and one row.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class RuntimeUnavailable(RuntimeError):
    """This machine cannot run the format's artifacts (another OS, an extra not installed): a skip, not an
    error of the artifact."""


@dataclass(frozen=True)
class ArtifactFile:
    """One file a format writes: the one place its name is declared (the format's module and the benchmark
    read it through `Format.file`)."""

    name: str  # the file name in the export folder; a `{field}` in it is filled in by Format.file
    precisions: str  # the precisions it comes in, for error messages


@dataclass(frozen=True)
class Format:
    name: str  # the name in export.formats
    module: str  # the module that converts and loads it (export, load)
    files: dict[str, ArtifactFile]  # role (fp32, int8, headless, ...) -> the file
    suffixes: dict[str, str]  # file suffix -> the manifest `format` of such an artifact
    headless: bool = False  # also exports the feature extractor (export_headless)
    probabilities: bool = False  # its predictor returns probabilities rather than logits
    requires: tuple[str, ...] = ()  # import names of the optional packages it needs
    extra: str | None = None  # the pip extra that installs them

    def impl(self) -> Any:
        """The format's module (export and load, and export_headless when `headless`)."""
        return importlib.import_module(self.module)

    def file(self, role: str, **fields: str) -> str:
        """The file name of `role` (Core ML: with its `variant` filled in)."""
        return self.files[role].name.format(**fields)

    def missing(self) -> str | None:
        """Why this format cannot be exported here (None when it can)."""
        absent = [name for name in self.requires if importlib.util.find_spec(name) is None]
        if not absent:
            return None
        return f'{", ".join(absent)} not installed: pip install -e ".[{self.extra}]"'

    def describe(self) -> str:
        """The name and the files it writes (with their precisions), for error messages."""
        files = ", ".join(
            f"{file.name.replace('{', '<').replace('}', '>')} ({file.precisions})"
            for file in self.files.values()
        )
        extra = f"; needs the [{self.extra}] extra" if self.extra else ""
        return f"{self.name}: {files}{extra}"


FORMATS: dict[str, Format] = {
    row.name: row
    for row in (
        Format(
            name="torchscript",
            module="trainer.export.converters.torchscript",
            files={
                "fp32": ArtifactFile("model_torchscript.pt", "fp32"),
                "lite": ArtifactFile("model_mobile.ptl", "fp32, torchscript.lite=true"),
            },
            suffixes={".pt": "torchscript", ".ptl": "torchscript_lite"},
        ),
        Format(
            name="onnx",
            module="trainer.export.converters.onnx",
            files={
                "fp32": ArtifactFile("model.onnx", "fp32"),
                "int8": ArtifactFile("model_int8.onnx", "int8"),
                "headless": ArtifactFile("feature_extractor.onnx", "fp32, headless"),
            },
            suffixes={".onnx": "onnx"},
            headless=True,
        ),
        Format(
            name="coreml",
            module="trainer.export.converters.coreml.export",
            files={
                "classifier": ArtifactFile(
                    "ImageClassifier_{variant}.mlpackage", "fp32, fp16, int8, palettizeN, w8a8"
                ),
                "headless": ArtifactFile("FeatureExtractor_fp16.mlpackage", "fp16, headless"),
            },
            suffixes={".mlpackage": "coreml"},
            headless=True,
            probabilities=True,
        ),
        Format(
            name="litert",
            module="trainer.export.converters.litert.export",
            files={
                "fp32": ArtifactFile("model.tflite", "fp32"),
                "fp16": ArtifactFile("model_fp16.tflite", "fp16"),
                "int8": ArtifactFile("model_int8.tflite", "int8"),
            },
            suffixes={".tflite": "litert"},
            requires=("litert_torch", "ai_edge_litert", "ai_edge_quantizer"),
            extra="mobile",
        ),
        Format(
            name="executorch",
            module="trainer.export.converters.executorch",
            files={"fp32": ArtifactFile("model.pte", "fp32"), "int8": ArtifactFile("model_int8.pte", "int8")},
            suffixes={".pte": "executorch"},
            requires=("executorch",),
            extra="mobile",
        ),
    )
}


def by_suffix(path: Path) -> Format | None:
    """The format whose artifacts end like `path` (None for a file no format writes)."""
    suffix = path.suffix.lower()
    return next((row for row in FORMATS.values() if suffix in row.suffixes), None)


def suffix_formats() -> dict[str, str]:
    """Every artifact suffix, mapped to the manifest `format` of such a file."""
    return {suffix: name for row in FORMATS.values() for suffix, name in row.suffixes.items()}


def manifest_format_order() -> list[str]:
    """The manifest `format` names in table order (report columns follow it)."""
    return list(dict.fromkeys(suffix_formats().values()))


def unknown_formats_message(unknown: list[str]) -> str:
    """The error for names that are not in the table: the table itself, on one line."""
    rows = "; ".join(row.describe() for row in FORMATS.values())
    return f"export.formats: unknown {unknown}; the formats are {rows}"
