"""What app developers receive beside the models, and how they are named: labels.txt, the model card
(README.md, model_card.py), Classifier.swift (Core ML through Vision, swift.py), Classifier.kt (LiteRT on
Android, kotlin.py) and PersonalizedClassifier.swift (updatable_swift.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from trainer.utils.files import write_text

LABELS_NAME = "labels.txt"
CARD_NAME = "README.md"
SWIFT_NAME = "Classifier.swift"
KOTLIN_NAME = "Classifier.kt"
KOTLIN_TEST_NAME = "ClassifierTest.kt"  # Android instrumented test of the golden photos (golden_tests.py)
SWIFT_TEST_NAME = "ClassifierTests.swift"  # XCTest of the golden photos
KOTLIN_PACKAGE = "com.example.classifier"  # the generated files' package: the developer moves them to theirs
LITERT_DEPENDENCY = "com.google.ai.edge.litert:litert:1.4.1"  # the Interpreter API, minSdk 21
EXIFINTERFACE_DEPENDENCY = "androidx.exifinterface:exifinterface:1.3.7"  # EXIF orientation below API 28
UPDATABLE_SWIFT_NAME = "PersonalizedClassifier.swift"  # not the Xcode-generated UpdatableClassifier.swift
SIMULATION_NOTE = "the extractor's layers from the spec, then the k-NN rule or SGD step in numpy"


def xcode_class_name(package: str | Path) -> str:
    """The Swift class Xcode generates for a model file: its base name, with characters that cannot appear in
    an identifier replaced by '_' and a leading digit escaped with '_'."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", Path(package).name.removesuffix(".mlpackage"))
    return f"_{name}" if name[:1].isdigit() else name


def swift_package(artifacts: list[dict[str, Any]]) -> str | None:
    """The Core ML classifier Classifier.swift loads: fp16 when exported, else the first one (None: none)."""
    packages = [a for a in artifacts if a["format"] == "coreml" and a["kind"] == "classifier"]
    return next((a for a in packages if a["precision"] == "fp16"), packages[0] if packages else {}).get(
        "path"
    )


def tflite_model(artifacts: list[dict[str, Any]]) -> str | None:
    """The LiteRT classifier Classifier.kt loads by default: the fp32 model.tflite (None: none exported)."""
    models = [a for a in artifacts if a["format"] == "litert" and a["kind"] == "classifier"]
    return next((a for a in models if a["precision"] == "fp32"), models[0] if models else {}).get("path")


def write_labels(out_dir: Path, classes: list[str]) -> str:
    """labels.txt: one class per line, in output-index order."""
    write_text(out_dir / LABELS_NAME, "".join(f"{c}\n" for c in classes))
    return LABELS_NAME
