"""The model card's Android parts (LiteRT and ExecuTorch inputs, the LiteRT preprocessing, Classifier.kt's
use), kept apart from model_card.py: an Android developer who normalizes the pixels for a model that does it
itself gets wrong answers, so the card says plainly what to feed and what Android's resize changes."""

from __future__ import annotations

from typing import Any

from trainer.data.data_config import DataConfig
from trainer.export.handoff.names import EXIFINTERFACE_DEPENDENCY, KOTLIN_NAME, LABELS_NAME, LITERT_DEPENDENCY


def mobile_inputs(manifest: dict[str, Any]) -> list[str]:
    """The input bullets of the Android formats, for those exported."""
    size, formats = manifest["image_size"], {a["format"] for a in manifest["artifacts"]}
    lines = []
    if "litert" in formats:
        lines.append(
            f"- **LiteRT** (`.tflite`, all precisions alike): float32 (1, {size}, {size}, 3) NHWC, RGB, raw "
            "0-255 values, NOT normalized: the model computes (pixel / 255 - mean) / std itself. Output "
            "(1, classes) logits. The classes and mean/std are also in the model's metadata (entry "
            "`trainer`, JSON), with the model's own measured figures."
        )
    if "executorch" in formats:
        lines.append(
            f"- **ExecuTorch** (`.pte`, XNNPACK delegate): float32 (1, 3, {size}, {size}) NCHW, normalized "
            "as for ONNX. Output (1, classes) logits."
        )
    return lines


def litert_preprocessing(prep: DataConfig) -> list[str]:
    """The LiteRT bullet of the card's preprocessing section: the steps the app takes, and how Android's
    resampling differs from the one measured."""
    lines = [
        f"- **LiteRT on Android** (`{KOTLIN_NAME}`): {prep.describe_geometry()}, then pass the pixels as "
        "raw RGB float values 0-255. Do NOT normalize them: the model computes (pixel / 255 - mean) / std "
        "itself, and pixels normalized twice give wrong answers."
    ]
    if prep.interpolation != "nearest":
        lines[0] += (
            f" `{KOTLIN_NAME}` resizes with `Bitmap.createScaledBitmap(..., filter = true)`, plain bilinear "
            f"without antialiasing; the figures above were measured with PIL's {prep.interpolation}, which "
            "antialiases (averages every source pixel under a target pixel) when it shrinks. Photos shrunk a "
            "lot therefore give slightly different pixels on Android; this export was not measured with "
            "Android's filter (on one fine-tuned MobileNetV2 and 153 photos, top-1 was unchanged with "
            "non-antialiased bilinear): check on your own photos if it matters."
        )
    return lines


def android_usage(tflite: str) -> list[str]:
    """The card's 'Using it on Android' section for Classifier.kt loading `tflite`."""
    return [
        "## Using it on Android",
        "",
        f"Put `{tflite}` and `{LABELS_NAME}` in `app/src/main/assets`, add "
        f'`implementation("{LITERT_DEPENDENCY}")` and `implementation("{EXIFINTERFACE_DEPENDENCY}")` (EXIF '
        f"orientation below API 28) and `{KOTLIN_NAME}`, then `Classifier(context).classify(uri)` (a photo's "
        "content Uri, decoded upright by its EXIF orientation) or `classify(bitmap)` (an upright bitmap) "
        "returns the top classes with confidences. It resizes and centre-crops as measured above and passes "
        "raw RGB 0-255 values, unnormalized; the smaller `model_fp16.tflite` and `model_int8.tflite` (sizes "
        "and accuracy above) take the same input.",
        "",
    ]
