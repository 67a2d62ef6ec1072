"""What app developers receive beside the models: labels.txt, a model card (README.md), Classifier.swift
(Core ML through Vision) and Classifier.kt (LiteRT on Android).

The app must feed the model what was measured. Every figure comes from the run's eval preprocessing (timm's
resize to floor(size / crop_pct), then center crop); Vision's `.centerCrop` would instead keep the whole
shorter side. So Classifier.swift sets the request's region of interest to the crop the evaluation kept and
scales it with `.scaleFill`, on the photo turned upright by its EXIF orientation, as the val images were.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from trainer.data.data_config import DataConfig
from trainer.export.confidence import accuracy_text
from trainer.export.job import MAX_INT8_TOP1_DROP
from trainer.export.manifest import write_text

LABELS_NAME = "labels.txt"
CARD_NAME = "README.md"
SWIFT_NAME = "Classifier.swift"
KOTLIN_NAME = "Classifier.kt"
LITERT_DEPENDENCY = "com.google.ai.edge.litert:litert:1.4.1"  # the Interpreter API, minSdk 21
UPDATABLE_SWIFT_NAME = "UpdatableClassifier.swift"
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


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _artifact_rows(manifest: dict[str, Any]) -> list[str]:
    rows = [
        "| file | format | precision | size | val top-1 (95% Wilson interval) | top-1 agreement with PyTorch "
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
            top1 = accuracy_text(a.get("val_top1"), manifest["val_images"])
            agreement = _pct(a.get("top1_agreement"))
        rows.append(
            f"| `{a['path']}` | {a['format']} | {a['precision']} | {_size(a['size_bytes'])} | {top1} "
            f"| {agreement} | {latency} |"
        )
    return rows


def _preprocessing(prep: DataConfig) -> list[str]:
    """The measured preprocessing, and how the app reproduces it (the choice, stated for the developer)."""
    if prep.crop_mode == "squash":
        region = f"the centred {prep.crop_fraction:.4f} of the upright image's width and height"
    else:
        region = f"the centred square of side {prep.crop_fraction:.4f} x the upright image's shorter side"
    return [
        "## Preprocessing: the app does what was measured",
        "",
        "Every figure in this card was measured with one preprocessing, resolved from the backbone's data "
        "config when training started and stored in the checkpoint: the photo turned upright by its EXIF "
        f"orientation, then {prep.describe()} (crop_pct {prep.crop_pct}).",
        "",
        f"- **Core ML through Vision** (`{SWIFT_NAME}`): the app reproduces this crop. (The alternative, "
        "measuring with Vision's `.centerCrop`, would keep the whole shorter side, i.e. crop_pct 1.0, and "
        "show the backbone more background than it was trained and evaluated with.) The request's "
        f"`regionOfInterest` is {region}, the region the resize + center crop keeps, and "
        f"`imageCropAndScaleOption = .scaleFill` scales it to {prep.size}x{prep.size}. Pass the photo's EXIF "
        "orientation to Vision (`classify(contentsOf:)` and the UIImage overload do). The model applies "
        f"mean/std itself. Vision's resampling filter is not PIL's {prep.interpolation}: pixels differ "
        "slightly, the region and the normalization do not.",
        "- **ONNX / TorchScript**: apply exactly these steps; `preprocess` in `manifest.json` (and in the "
        "ONNX files' metadata) holds them as data.",
        "",
    ]


def _trained(meta: dict[str, Any]) -> list[str]:
    """The run's metadata, its accuracies with their interval on the run's val images."""
    lines = []
    for key, value in meta.items():
        if key in ("val_top1", "val_top3", "val_top5") and isinstance(value, float):
            value = accuracy_text(value, meta.get("val_images"))
        lines.append(f"- {key}: {value}")
    return lines


def _coreml_checks(artifacts: list[dict[str, Any]], images: int) -> list[str]:
    """One line per measured Core ML classifier: its figures, drop against fp32 PyTorch, and gate."""
    measured = [
        a for a in artifacts if a["format"] == "coreml" and a["kind"] == "classifier" and a.get("runtime")
    ]
    if not measured:
        return []
    lines = ["", f"Core ML packages measured with the {measured[0]['runtime']}:", ""]
    for a in measured:
        check = a.get("gate")
        verdict = f"gate {check['rule']}: {'passed' if check['passed'] else 'FAILED'}" if check else "no gate"
        drop = a.get("top1_drop_vs_fp32")
        lines.append(
            f"- `{a['path']}`: val top-1 {accuracy_text(a.get('val_top1'), images)}, "
            f"agreement {_pct(a.get('top1_agreement'))}, "
            f"drop vs fp32 PyTorch {'n/a' if drop is None else f'{drop:+.2f} pt'}; {verdict}"
        )
    return lines


def model_card(manifest: dict[str, Any]) -> str:
    """README.md for app developers, written from the manifest so the two never disagree."""
    classes, size = manifest["classes"], manifest["image_size"]
    prep = DataConfig.from_dict(manifest["preprocess"])
    meta = manifest.get("metadata", {})
    reasons = sorted({a["reason"] for a in manifest["artifacts"] if a.get("reason")})
    lines = [
        f"# {meta.get('backbone', 'Image')} classifier",
        "",
        manifest["description"],
        "",
        f"- Author: {manifest['author']}",
        f"- License: {manifest['license']}",
        f"- Version: {manifest['version']}",
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
        f"(pixel / 255 - mean) / std with mean {list(prep.mean)} and std {list(prep.std)}. Output `logits` "
        "(N, classes); apply softmax for probabilities.",
        *_mobile_inputs(manifest),
        "",
        *_preprocessing(prep),
        "## Artifacts",
        "",
        f"Measured on {manifest['val_images']} validation images; PyTorch itself scores "
        f"{accuracy_text(manifest['pytorch_val_top1'], manifest['val_images'])} top-1 on them.",
        "",
        *_artifact_rows(manifest),
        "",
        *[f"n/a: {r}." for r in reasons],
        *_coreml_checks(manifest["artifacts"], manifest["val_images"]),
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
        *_trained(meta),
        "",
    ]
    lines += _quantization_lines(manifest)
    lines += _updatable_section(manifest)
    package = swift_package(manifest["artifacts"])
    if package:
        lines += [
            "## Using it in an app",
            "",
            f"Add `{package}` to your Xcode target and `{SWIFT_NAME}` to your sources, then "
            "`try Classifier().classify(contentsOf: url)` (or `classify(uiImage)`, or "
            "`classify(cgImage, orientation:)`) returns the top classes with confidences. "
            "Xcode's model preview accepts dragged-in photos, but crops them its own way.",
            "",
        ]
    tflite = tflite_model(manifest["artifacts"])
    if tflite:
        lines += [
            "## Using it on Android",
            "",
            f"Put `{tflite}` and `{LABELS_NAME}` in `app/src/main/assets`, add "
            f'`implementation("{LITERT_DEPENDENCY}")` and `{KOTLIN_NAME}`, then '
            "`Classifier(context).classify(bitmap)` returns the top classes with confidences. It resizes and "
            "centre-crops the bitmap as measured above and passes raw RGB values; the smaller "
            "`model_fp16.tflite` and `model_int8.tflite` (sizes and accuracy above) take the same input.",
            "",
        ]
    return "\n".join(lines)


def _mobile_inputs(manifest: dict[str, Any]) -> list[str]:
    """The input bullets of the Android formats, for those exported."""
    size, formats = manifest["image_size"], {a["format"] for a in manifest["artifacts"]}
    lines = []
    if "litert" in formats:
        lines.append(
            f"- **LiteRT** (`.tflite`, all precisions alike): float32 (1, {size}, {size}, 3) NHWC, RGB, raw "
            "0-255 values: the normalization is built into the model. Output (1, classes) logits. The "
            "classes and mean/std are also in the model's metadata (entry `trainer`, JSON)."
        )
    if "executorch" in formats:
        lines.append(
            f"- **ExecuTorch** (`.pte`, XNNPACK delegate): float32 (1, 3, {size}, {size}) NCHW, normalized "
            "as for ONNX. Output (1, classes) logits."
        )
    return lines


def _quantization_lines(manifest: dict[str, Any]) -> list[str]:
    """How each quantized copy fared against its own fp32 model on the val images (gate: 1 point)."""
    rows = [a for a in manifest["artifacts"] if a.get("top1_drop_vs_fp32") is not None]
    if not rows:
        return []
    lines = ["## Quantization on these images", ""]
    for a in rows:
        drop = a["top1_drop_vs_fp32"]
        verdict = "within" if drop <= MAX_INT8_TOP1_DROP else "**over**"
        agreement = _pct(a.get("top1_agreement_vs_fp32"))
        lines.append(
            f"- `{a['path']}`: {drop:+.1f} points of val top-1 lost against fp32 ({verdict} the "
            f"{MAX_INT8_TOP1_DROP:g}-point gate), top-1 agreement with fp32 {agreement}."
        )
    return [*lines, ""]


def _updatable_section(manifest: dict[str, Any]) -> list[str]:
    """How UpdatableClassifier.mlmodel learns on the phone, what it needs, and what it measured."""
    entry = next((a for a in manifest["artifacts"] if a["kind"] == "updatable"), None)
    if entry is None:
        return []
    kind, params = entry["updatable"], entry.get("update_parameters") or {}
    lines = [
        f"## On-device training: `{entry['path']}` ({kind})",
        "",
        "Core ML can update only NeuralNetwork and k-nearest-neighbour models (their specs carry the loss, "
        "optimizer and epochs, or the example index); ML Programs (`.mlpackage`) cannot be trained on the "
        "device. So this model is a classic `.mlmodel` (iOS 13+): a pipeline of the fine-tuned backbone "
        "without its head (a NeuralNetwork, fp32, fixed) and "
        + (
            "an updatable k-nearest-neighbours classifier seeded with embeddings of "
            "training images, so it classifies before any update."
            if kind == "knn"
            else "the trained linear head as an updatable fully connected layer with softmax, categorical "
            "cross-entropy loss and SGD."
        ),
        "",
        "- Inputs for prediction: `image`; for `MLUpdateTask`: "
        + ", ".join(f"`{n}`" for n in entry["training_inputs"])
        + " (the photo and its label as a string).",
        "- Update parameters the app can change (`MLParameterKey`): "
        + (", ".join(f"`{k}` (default {v})" for k, v in params.items()) if params else "none (k-NN)")
        + ".",
        f"- `{UPDATABLE_SWIFT_NAME}` classifies, runs `MLUpdateTask` on labelled `CGImage`s, saves the "
        "updated model in the app's Documents folder and reloads it from there on the next launch.",
        "- **knn** learns new classes from a few examples with no tuning (the label can be one the model has "
        "never seen) and keeps every example it learns from, so its index (and prediction time) grows with "
        "each; **head** keeps the fixed "
        "class list and is usually more accurate, but needs a learning rate and epochs and can drift "
        "towards the classes it was updated on.",
    ]
    result = entry.get("personalization")
    if result:
        lines += [
            "",
            f"Simulated on Linux with the model's own numbers ({SIMULATION_NOTE}): val top-1 before any "
            f"update {_pct(entry.get('val_top1'))}. Personalization: class `{result['holdout_class']}` held "
            f"out of {result['held_out_of']}, then learned from {result['update_examples']} of its training "
            f"images: top-1 on its {result['holdout_val_images']} val images "
            f"{_pct(result['holdout_top1_before'])} -> {_pct(result['holdout_top1_after'])}, on the other "
            f"classes' {result['other_val_images']} {_pct(result['others_top1_before'])} -> "
            f"{_pct(result['others_top1_after'])}.",
        ]
    return [*lines, ""]


def write_model_card(out_dir: Path, manifest: dict[str, Any]) -> str:
    write_text(out_dir / CARD_NAME, model_card(manifest))
    return CARD_NAME


def _region_swift(prep: DataConfig) -> str:
    """Body of Classifier.evaluatedRegion: the crop of the evaluation, normalized to the upright image."""
    if prep.crop_mode == "squash":
        return """        let inset = (1 - cropFraction) / 2  // the same share of each side (squash)
        return CGRect(x: inset, y: inset, width: cropFraction, height: cropFraction)"""
    return """        var (w, h) = (Double(width), Double(height))
        switch orientation {
        case .left, .leftMirrored, .right, .rightMirrored: swap(&w, &h)  // stored sideways: upright is h x w
        default: break
        }
        let side = min(w, h) * cropFraction  // a centred square of the upright image's shorter side
        let (rw, rh) = (side / w, side / h)
        return CGRect(x: (1 - rw) / 2, y: (1 - rh) / 2, width: rw, height: rh)"""


def swift_classifier(package: str, prep: DataConfig) -> str:
    """Classifier.swift: classifies photos with Vision and the Xcode-generated class of `package`, cropping
    and orienting them as the evaluation did (see the module docstring)."""
    model_class = xcode_class_name(package)
    size = prep.size
    return f"""// {SWIFT_NAME}: generated by trainer for {package}.
// Add {package} to your Xcode target: Xcode generates the `{model_class}` class used below.
import CoreGraphics
import CoreML
import Foundation
import ImageIO
import Vision
#if canImport(UIKit)
import UIKit
#endif

/// Classifies photos with {model_class} through Vision, preprocessed as the model was evaluated: turned
/// upright by their EXIF orientation, cropped to the region the evaluation kept and scaled to {size}x{size};
/// the model normalizes the pixels itself. The evaluation's preprocessing:
/// {prep.describe()}.
final class Classifier {{
    struct Prediction {{
        let label: String
        let confidence: Float
    }}

    /// Share of the resized side the evaluation's center crop kept: {size} / {prep.resize_size}.
    static let cropFraction: Double = {prep.crop_fraction!r}

    private let model: VNCoreMLModel

    init(configuration: MLModelConfiguration = MLModelConfiguration()) throws {{
        let coreMLModel = try {model_class}(configuration: configuration).model
        model = try VNCoreMLModel(for: coreMLModel)
    }}

    /// Classifies the photo file at `url` (JPEG, HEIC, PNG...) with the orientation stored in its EXIF data.
    func classify(contentsOf url: URL, topK: Int = 3) throws -> [Prediction] {{
        guard let source = CGImageSourceCreateWithURL(url as CFURL, nil),
              let image = CGImageSourceCreateImageAtIndex(source, 0, nil)
        else {{
            throw CocoaError(.fileReadCorruptFile, userInfo: [NSURLErrorKey: url])
        }}
        let properties = CGImageSourceCopyPropertiesAtIndex(source, 0, nil) as? [CFString: Any]
        let exif = (properties?[kCGImagePropertyOrientation] as? NSNumber)?.uint32Value
        let orientation = exif.flatMap {{ CGImagePropertyOrientation(rawValue: $0) }} ?? .up
        return try classify(image, orientation: orientation, topK: topK)
    }}

    /// The `topK` most likely classes, best first. `orientation` is the photo's EXIF orientation: Vision
    /// turns the image upright with it before cropping. Runs synchronously: call it off the main thread.
    func classify(
        _ image: CGImage, orientation: CGImagePropertyOrientation, topK: Int = 3
    ) throws -> [Prediction] {{
        let request = VNCoreMLRequest(model: model)
        request.regionOfInterest = Classifier.evaluatedRegion(
            width: image.width, height: image.height, orientation: orientation
        )
        request.imageCropAndScaleOption = .scaleFill  // the region is already the evaluated crop
        let handler = VNImageRequestHandler(cgImage: image, orientation: orientation, options: [:])
        try handler.perform([request])
        let observations = (request.results as? [VNClassificationObservation]) ?? []
        return observations
            .sorted {{ $0.confidence > $1.confidence }}
            .prefix(topK)
            .map {{ Prediction(label: $0.identifier, confidence: $0.confidence) }}
    }}

    /// The region the evaluation's resize + center crop keeps, normalized to the upright image (Vision's
    /// regionOfInterest; centred, so its lower-left origin convention does not matter).
    static func evaluatedRegion(
        width: Int, height: Int, orientation: CGImagePropertyOrientation
    ) -> CGRect {{
{_region_swift(prep)}
    }}
}}

#if canImport(UIKit)
extension Classifier {{
    /// Classifies a UIImage (camera, photo picker) with its `imageOrientation`.
    func classify(_ image: UIImage, topK: Int = 3) throws -> [Prediction] {{
        guard let cgImage = image.cgImage else {{
            throw CocoaError(.featureUnsupported)  // a CIImage-backed UIImage: render it to a CGImage first
        }}
        let orientation = CGImagePropertyOrientation(image.imageOrientation)
        return try classify(cgImage, orientation: orientation, topK: topK)
    }}
}}

extension CGImagePropertyOrientation {{
    init(_ orientation: UIImage.Orientation) {{
        switch orientation {{
        case .up: self = .up
        case .upMirrored: self = .upMirrored
        case .down: self = .down
        case .downMirrored: self = .downMirrored
        case .left: self = .left
        case .leftMirrored: self = .leftMirrored
        case .right: self = .right
        case .rightMirrored: self = .rightMirrored
        @unknown default: self = .up
        }}
    }}
}}
#endif
"""


def write_swift(out_dir: Path, package: str, prep: DataConfig) -> str:
    write_text(out_dir / SWIFT_NAME, swift_classifier(package, prep))
    return SWIFT_NAME


def _kotlin_resize(prep: DataConfig) -> str:
    """Kotlin that scales `bitmap` as the measured eval transform's resize did."""
    filtered = "false" if prep.interpolation == "nearest" else "true"
    side = prep.resize_size
    if prep.crop_mode == "squash":
        return f"""        return Bitmap.createScaledBitmap(bitmap, {side}, {side}, {filtered})"""
    return f"""        // Shorter side to {prep.resize_size} px, longer side scaled alike, truncated
        val short = minOf(bitmap.width, bitmap.height)
        val long = (maxOf(bitmap.width, bitmap.height).toLong() * {prep.resize_size} / short).toInt()
        val wide = bitmap.width > bitmap.height
        val (width, height) = if (wide) long to {prep.resize_size} else {prep.resize_size} to long
        return Bitmap.createScaledBitmap(bitmap, width, height, {filtered})"""


def kotlin_classifier(model: str, prep: DataConfig) -> str:
    """Classifier.kt: classifies an upright Android Bitmap with the LiteRT Interpreter and the measured
    preprocessing: the eval resize and centre crop, then raw RGB 0-255 floats in NHWC order (the model
    normalizes them itself)."""
    size = prep.size
    filter_note = (
        ""
        if prep.interpolation in ("bilinear", "nearest")
        else f"\n// The evaluation resized with {prep.interpolation}; Android's filter is bilinear."
    )
    return f"""// {KOTLIN_NAME}: generated by trainer for {model}.
// Put {model} and {LABELS_NAME} into app/src/main/assets and add to the app's build.gradle.kts:
//     implementation("{LITERT_DEPENDENCY}")
// model_fp16.tflite and model_int8.tflite, where exported, take the same input: pass their name.{filter_note}
import android.content.Context
import android.graphics.Bitmap
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.channels.FileChannel
import kotlin.math.exp
import kotlin.math.rint
import org.tensorflow.lite.Interpreter

/**
 * Classifies photos as they were measured at export: {prep.describe()}. The model applies mean/std
 * itself. Pass an upright bitmap (apply the photo's EXIF orientation first), as the val images were.
 */
class Classifier(
    context: Context,
    modelAsset: String = "{model}",
    threads: Int = 4,
) : AutoCloseable {{
    data class Prediction(val label: String, val confidence: Float)

    private val labels =
        context.assets.open("{LABELS_NAME}").bufferedReader().readLines().filter {{ it.isNotBlank() }}
    private val interpreter = Interpreter(
        context.assets.openFd(modelAsset).use {{ fd ->
            FileInputStream(fd.fileDescriptor).channel.map(
                FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength
            )
        }},
        Interpreter.Options().setNumThreads(threads),
    )

    /** The `topK` most likely classes, best first. Runs synchronously: call it off the main thread. */
    fun classify(bitmap: Bitmap, topK: Int = 3): List<Prediction> {{
        val logits = Array(1) {{ FloatArray(labels.size) }}
        interpreter.run(pixels(centerCrop(resize(bitmap))), logits)
        val top = logits[0].maxOrNull() ?: 0f
        val weights = logits[0].map {{ exp(it - top) }}
        val total = weights.sum()
        return weights.indices.sortedByDescending {{ weights[it] }}.take(topK)
            .map {{ Prediction(labels[it], weights[it] / total) }}
    }}

    override fun close() = interpreter.close()

    private fun resize(bitmap: Bitmap): Bitmap {{
{_kotlin_resize(prep)}
    }}

    /** The centre {size}x{size} pixels; offsets rounded half to even, as torchvision's center_crop. */
    private fun centerCrop(bitmap: Bitmap): Bitmap {{
        val left = rint((bitmap.width - {size}) / 2.0).toInt()
        val top = rint((bitmap.height - {size}) / 2.0).toInt()
        return Bitmap.createBitmap(bitmap, left, top, {size}, {size})
    }}

    /** float32 NHWC (1, {size}, {size}, 3): raw R, G, B values 0-255; the model normalizes them. */
    private fun pixels(bitmap: Bitmap): ByteBuffer {{
        val argb = IntArray({size} * {size})
        bitmap.getPixels(argb, 0, {size}, 0, 0, {size}, {size})
        val buffer = ByteBuffer.allocateDirect(4 * 3 * argb.size).order(ByteOrder.nativeOrder())
        for (pixel in argb) {{
            buffer.putFloat(((pixel shr 16) and 0xFF).toFloat())
            buffer.putFloat(((pixel shr 8) and 0xFF).toFloat())
            buffer.putFloat((pixel and 0xFF).toFloat())
        }}
        return buffer.rewind() as ByteBuffer
    }}
}}
"""


def write_kotlin(out_dir: Path, model: str, prep: DataConfig) -> str:
    write_text(out_dir / KOTLIN_NAME, kotlin_classifier(model, prep))
    return KOTLIN_NAME
