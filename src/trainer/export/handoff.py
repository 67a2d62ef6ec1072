"""What app developers receive beside the models: labels.txt, a model card (README.md), Classifier.swift."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from trainer.export.manifest import write_text

LABELS_NAME = "labels.txt"
CARD_NAME = "README.md"
SWIFT_NAME = "Classifier.swift"


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


def write_labels(out_dir: Path, classes: list[str]) -> str:
    """labels.txt: one class per line, in output-index order."""
    write_text(out_dir / LABELS_NAME, "".join(f"{c}\n" for c in classes))
    return LABELS_NAME


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _artifact_rows(manifest: dict[str, Any]) -> list[str]:
    rows = [
        "| file | format | precision | size | val top-1 | top-1 agreement with PyTorch "
        "| latency (CPU, batch 1) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for a in manifest["artifacts"]:
        latency = "n/a"
        if a.get("latency_ms") is not None:
            latency = f"{a['latency_ms']:.2f} ms ({a['threads']} thread{'s' if a['threads'] != 1 else ''})"
        if a["kind"] == "embedding":
            quality = "embedding, min cosine vs PyTorch " + (
                f"{a['min_cosine_similarity']:.4f}" if a.get("min_cosine_similarity") is not None else "n/a"
            )
            top1, agreement = "n/a", quality
        else:
            top1, agreement = _pct(a.get("val_top1")), _pct(a.get("top1_agreement"))
        rows.append(
            f"| `{a['path']}` | {a['format']} | {a['precision']} | {_size(a['size_bytes'])} | {top1} "
            f"| {agreement} | {latency} |"
        )
    return rows


def model_card(manifest: dict[str, Any]) -> str:
    """README.md for app developers, written from the manifest so the two never disagree."""
    classes, size, prep = manifest["classes"], manifest["image_size"], manifest["preprocess"]
    meta = manifest.get("metadata", {})
    reasons = sorted({a["reason"] for a in manifest["artifacts"] if a.get("reason")})
    lines = [
        f"# {meta.get('backbone', 'Image')} classifier",
        "",
        manifest["description"],
        "",
        f"## Classes ({len(classes)})",
        "",
        *[f"{i}. {c}" for i, c in enumerate(classes)],
        "",
        "`labels.txt` lists them in output order.",
        "",
        "## Input",
        "",
        f"- **Core ML** (`.mlpackage`): an RGB image of {size}x{size} pixels, raw 0-255 values: the "
        "normalization is built into the model. Outputs `classLabel` (best class) and `classLabel_probs` "
        "(probability per class).",
        f"- **ONNX / TorchScript**: float32 tensor `image` of shape (N, 3, {size}, {size}), RGB, "
        f"(pixel / 255 - mean) / std with mean {prep['mean']} and std {prep['std']}. Output `logits` "
        "(N, classes); apply softmax for probabilities.",
        f"- Evaluation preprocessing: resize {prep['resize']} ({prep['interpolation']}; an int is the "
        f"shorter side), then center crop {prep['crop']}. Vision's `.centerCrop` option scales the shorter "
        f"side to {size} and crops the centre, which is close to this.",
        "",
        "## Artifacts",
        "",
        f"Measured on {manifest['val_images']} validation images; PyTorch itself scores "
        f"{_pct(manifest['pytorch_val_top1'])} top-1 on them.",
        "",
        *_artifact_rows(manifest),
        "",
        *[f"n/a: {r}." for r in reasons],
    ]
    if manifest["skipped"]:
        lines += ["", "Not produced:", "", *[f"- {s['name']}: {s['reason']}" for s in manifest["skipped"]]]
    if manifest["errors"]:
        lines += [
            "",
            "**Export errors:**",
            "",
            *[f"- {e['artifact']}: {e['error']}" for e in manifest["errors"]],
        ]
    lines += [
        "",
        "## How it was trained",
        "",
        *[f"- {key}: {value}" for key, value in meta.items()],
        "",
    ]
    package = swift_package(manifest["artifacts"])
    if package:
        lines += [
            "## Using it in an app",
            "",
            f"Add `{package}` to your Xcode target and `{SWIFT_NAME}` to your sources, then "
            "`try Classifier().classify(cgImage)` returns the top classes with confidences. "
            "Xcode's model preview accepts dragged-in photos.",
            "",
        ]
    return "\n".join(lines)


def write_model_card(out_dir: Path, manifest: dict[str, Any]) -> str:
    write_text(out_dir / CARD_NAME, model_card(manifest))
    return CARD_NAME


def swift_classifier(package: str, image_size: int) -> str:
    """Classifier.swift: classifies a CGImage with Vision and the Xcode-generated class of `package`."""
    model_class = xcode_class_name(package)
    return f"""// {SWIFT_NAME}: generated by trainer for {package}.
// Add {package} to your Xcode target: Xcode generates the `{model_class}` class used below.
import CoreGraphics
import CoreML
import ImageIO
import Vision

/// Classifies photos with {model_class} through Vision, which scales and centre-crops each image to the
/// model's {image_size}x{image_size} input. The model normalizes pixels itself.
final class Classifier {{
    struct Prediction {{
        let label: String
        let confidence: Float
    }}

    private let model: VNCoreMLModel

    init(configuration: MLModelConfiguration = MLModelConfiguration()) throws {{
        let coreMLModel = try {model_class}(configuration: configuration).model
        model = try VNCoreMLModel(for: coreMLModel)
    }}

    /// The `topK` most likely classes, best first. Runs synchronously: call it off the main thread.
    func classify(
        _ image: CGImage, orientation: CGImagePropertyOrientation = .up, topK: Int = 3
    ) throws -> [Prediction] {{
        let request = VNCoreMLRequest(model: model)
        request.imageCropAndScaleOption = .centerCrop
        let handler = VNImageRequestHandler(cgImage: image, orientation: orientation, options: [:])
        try handler.perform([request])
        let observations = (request.results as? [VNClassificationObservation]) ?? []
        return observations
            .sorted {{ $0.confidence > $1.confidence }}
            .prefix(topK)
            .map {{ Prediction(label: $0.identifier, confidence: $0.confidence) }}
    }}
}}
"""


def write_swift(out_dir: Path, package: str, image_size: int) -> str:
    write_text(out_dir / SWIFT_NAME, swift_classifier(package, image_size))
    return SWIFT_NAME
