"""The model card's Android parts (LiteRT and ExecuTorch inputs, the LiteRT preprocessing, Classifier.kt's
use), kept apart from model_card.py: an Android developer who normalizes the pixels for a model that does it
itself gets wrong answers, so the card says plainly what to feed and what Android's resize changes."""

from __future__ import annotations

from typing import Any

from trainer.data.data_config import DataConfig
from trainer.export.handoff.names import KOTLIN_NAME, KOTLIN_TEST_NAME


def mobile_inputs(manifest: dict[str, Any]) -> list[str]:
    """The input bullets of the Android formats, for those exported."""
    size, formats = manifest["image_size"], {a["format"] for a in manifest["artifacts"]}
    lines = []
    if "litert" in formats:
        lines.append(
            f"- **LiteRT** (`.tflite`, all precisions alike): float32 (1, {size}, {size}, 3) NHWC, RGB, raw "
            "0-255 values, NOT normalized: the model computes (pixel / 255 - mean) / std itself. Output "
            "(1, classes) logits. Each file carries the standard TFLite Metadata (Android Studio's ML Model "
            "Binding and the LiteRT support library read it: RGB image input, normalization mean 0 / std 1 "
            "since the model normalizes itself, `labels.txt` packed in for the output), and the classes, "
            "mean/std and the model's own measured figures as JSON (metadata entry `trainer`)."
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
            f" The figures were measured with PIL's {prep.interpolation}, which antialiases when it shrinks; "
            f"Android has no such resize, so `{KOTLIN_NAME}` decodes with power-of-two subsampling (shorter "
            f"side kept at least {prep.decode_min_side} px, as the evaluation decoded JPEGs), halves with a "
            "bilinear filter (a 2x2 average) while the target is under half the size, and takes the last "
            "step bilinear. Simulated on a 2016x1512 image with fine detail, that stays 0.4 (of 255) from "
            "PIL's pixels on average, where one bilinear step from full size was 19.5 off "
            "(tests/test_handoff_code.py)."
            f" `{KOTLIN_TEST_NAME}` checks the result on the device."
        )
    return lines
