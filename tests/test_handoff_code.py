"""The generated app code compiles and does what was measured, checked without an export.

Kotlin: Classifier.kt and ClassifierTest.kt are compiled with the real `kotlinc` (Debian's `kotlin` package;
.ci/run installs it) against tests/fixtures/android_stubs, Java stubs of exactly the Android, AndroidX and
LiteRT members they use. Debian's kotlinc is 1.3, so the code also avoids later syntax (trailing commas,
maxOrNull). Swift: `swiftc -parse` where a Swift toolchain exists; the Apple SDK checks (availability, actor
isolation, API names) are read from the source here and compiled on macOS by test_updatable.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_export import DATA_CONFIG

from trainer.data.data_config import DataConfig
from trainer.data.transforms import eval_transform
from trainer.export.handoff.card_start import warnings
from trainer.export.handoff.golden_tests import kotlin_test, swift_tests
from trainer.export.handoff.kotlin import kotlin_classifier
from trainer.export.handoff.model_card import trained_lines
from trainer.export.handoff.names import xcode_class_name
from trainer.export.handoff.swift import swift_availability, swift_classifier
from trainer.export.handoff.updatable_swift import CLASS_NAME, SWIFT_NAME, swift_updatable
from trainer.export.settings import (
    LICENSE_UNSET,
    PRETRAINED_DESCRIPTION,
    SCRATCH_DESCRIPTION,
    run_description,
)
from trainer.export.updatable.model import MODEL_NAME

STUBS = Path(__file__).parent / "fixtures" / "android_stubs"
SQUASH_NEAREST = DataConfig(
    size=64, interpolation="nearest", crop_pct=0.9, crop_mode="squash", mean=(0.5,) * 3, std=(0.5,) * 3
)
PACKAGE = "ImageClassifier_fp16.mlpackage"


def kotlinc_errors(tmp_path: Path, sources: dict[str, str]) -> str:
    """kotlinc's error lines for `sources` compiled with the stubs ('' when it compiles)."""
    for name, text in sources.items():
        (tmp_path / name).write_text(text)
    stubs = sorted(str(p) for p in STUBS.rglob("*.java"))
    result = subprocess.run(
        ["kotlinc", *[str(tmp_path / n) for n in sources], *stubs, "-d", str(tmp_path / "classes")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error:" in line]
    return "\n".join(errors) or ("" if result.returncode == 0 else result.stderr)


@pytest.mark.skipif(shutil.which("kotlinc") is None, reason="kotlinc not installed (apt-get install kotlin)")
@pytest.mark.parametrize("prep", [DATA_CONFIG, SQUASH_NEAREST], ids=["center-bilinear", "squash-nearest"])
def test_kotlin_compiles(tmp_path: Path, prep: DataConfig) -> None:
    """One kotlinc run per preprocessing variant: Classifier.kt and the golden-photo instrumented test."""
    sources = {"Classifier.kt": kotlin_classifier("model.tflite", prep), "ClassifierTest.kt": kotlin_test()}
    assert kotlinc_errors(tmp_path, sources) == ""


@pytest.mark.skipif(shutil.which("kotlinc") is None, reason="kotlinc not installed (apt-get install kotlin)")
def test_kotlin_check_catches_a_missing_function(tmp_path: Path) -> None:
    """The check is real: the old `kotlin.math.rint` import (not in the standard library) fails it."""
    broken = kotlin_classifier("model.tflite", DATA_CONFIG).replace("kotlin.math.round", "kotlin.math.rint")
    assert "rint" in kotlinc_errors(tmp_path, {"Classifier.kt": broken})


def test_kotlin_keeps_no_activity_and_closes_what_it_opens() -> None:
    kotlin = kotlin_classifier("model.tflite", DATA_CONFIG)
    assert re.search(r"^package [a-z][\w.]*$", kotlin, re.M), "a package line"
    assert "context.applicationContext" in kotlin and "context.contentResolver" not in kotlin
    assert "FileInputStream(fd.fileDescriptor).use" in kotlin and "context.assets.openFd(name).use" in kotlin
    assert "synchronized(interpreter) { interpreter.run(input, logits) }" in kotlin
    assert "synchronized(interpreter) { interpreter.close() }" in kotlin
    assert "import kotlin.math.round" in kotlin and "rint" not in kotlin
    assert re.search(r'open\("labels.txt"\)', kotlin), "labels read at run time"


def android_pixels(image: Image.Image, prep: DataConfig, *, box: bool) -> np.ndarray:
    """What Classifier.kt computes, in numpy: power-of-two subsampling at decode (a box average, as JPEG DCT
    scaling), bilinear halvings (2x2 averages) while the target is under half, a last bilinear step without
    antialiasing, then the centre crop. Without `box`: the old single bilinear step from the full photo."""
    pixels = torch.from_numpy(np.asarray(image, np.float32)).permute(2, 0, 1)[None]
    sample = 1
    while box and min(image.size) // (sample * 2) >= prep.decode_min_side:
        sample *= 2
    pixels = torch.nn.functional.avg_pool2d(pixels, sample) if sample > 1 else pixels
    height, width = pixels.shape[2:]
    short, side = min(height, width), prep.resize_size
    target = (side, width * side // short) if height < width else (height * side // short, side)
    while box and pixels.shape[2] >= 2 * target[0] and pixels.shape[3] >= 2 * target[1]:
        pixels = torch.nn.functional.avg_pool2d(pixels, 2)
    pixels = torch.nn.functional.interpolate(pixels, size=target, mode="bilinear", antialias=False)
    top, left = round((target[0] - prep.size) / 2), round((target[1] - prep.size) / 2)
    return pixels[0, :, top : top + prep.size, left : left + prep.size].numpy()


def test_android_resize_follows_the_antialiased_one() -> None:
    """On a 2016x1512 photo-like image with fine detail, Classifier.kt's subsampled decode and box halvings
    stay close to the evaluation's PIL resize, where the old one-step bilinear shrink aliased."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:1512, 0:2016]
    stripes = 127 + 100 * np.sin(xs * 1.9) * np.cos(ys * 0.7)
    smooth = np.stack([xs / 8, ys / 6, (xs + ys) / 14], axis=-1)
    pixels = np.clip(smooth + stripes[..., None] * 0.5 + rng.normal(0, 10, (1512, 2016, 3)), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    prep = DATA_CONFIG
    evaluated = eval_transform(dataclasses.replace(prep, mean=(0.0,) * 3, std=(1 / 255,) * 3))
    reference = np.asarray(evaluated(image))
    ours = np.abs(android_pixels(image, prep, box=True) - reference).mean()
    one_step = np.abs(android_pixels(image, prep, box=False) - reference).mean()
    assert ours < 3.0 and one_step > 3 * ours, (ours, one_step)


def test_swift_availability_follows_the_deployment_target() -> None:
    assert swift_availability("iOS16") == ("16.0", "13.0")
    assert swift_availability("iOS17") == ("17.0", "14.0")
    assert swift_availability("macOS15") == ("18.0", "15.0")
    swift = swift_classifier(PACKAGE, DATA_CONFIG, "iOS17")
    assert "@available(iOS 17.0, macOS 14.0, *)\nactor Classifier {" in swift
    assert "@available(iOS 17.0, macOS 14.0, *)\nextension Classifier {" in swift
    tests = swift_tests(PACKAGE, "iOS17")
    assert "@available(iOS 17.0, macOS 14.0, *)\nfinal class ClassifierTests: XCTestCase" in tests


def test_swift_declares_nothing_an_app_already_has() -> None:
    """No public CGImagePropertyOrientation(UIImage.Orientation) extension (Apple's sample one clashes), and
    no type named after the Xcode-generated model classes or sharing their file name."""
    swift = swift_classifier(PACKAGE, DATA_CONFIG)
    assert "extension CGImagePropertyOrientation" not in swift
    assert "private static func exifOrientation(_ orientation: UIImage.Orientation)" in swift
    generated = {xcode_class_name(PACKAGE), xcode_class_name(MODEL_NAME.replace(".mlmodel", ".mlpackage"))}
    for kind in ("knn", "head"):
        updatable = swift_updatable(kind, DATA_CONFIG, ("a", "b"))
        declared = set(re.findall(r"^(?:final class|class|actor|struct) (\w+)", updatable, re.M))
        assert declared == {CLASS_NAME} and not declared & generated
    assert Path(SWIFT_NAME).stem != Path(MODEL_NAME).stem, "Xcode generates UpdatableClassifier.swift"


def test_swift_runs_off_the_main_actor_and_renders_ciimages() -> None:
    swift = swift_classifier(PACKAGE, DATA_CONFIG)
    assert "\nactor Classifier {" in swift and "class Classifier" not in swift
    assert "image.ciImage" in swift and "CIContext().createCGImage(ciImage, from: ciImage.extent)" in swift
    assert "actor PersonalizedClassifier {" in swift_updatable("knn", DATA_CONFIG, ("a", "b"))


def region(swift: str) -> str:
    return re.search(r"static func evaluatedRegion\(.*?\n    \}\n", swift, re.S).group(0)


@pytest.mark.parametrize("prep", [DATA_CONFIG, SQUASH_NEAREST], ids=["center", "squash"])
def test_updatable_path_preprocesses_as_evaluated(prep: DataConfig) -> None:
    """The personalization path crops and orients like Classifier.swift (the evaluated crop, not Vision's
    centerCrop; the photo's EXIF orientation passed to MLFeatureValue), on training examples and queries."""
    updatable = swift_updatable("head", prep, ("a", "b"))
    assert region(updatable) == region(swift_classifier(PACKAGE, prep))
    assert f"static let cropFraction: Double = {prep.crop_fraction!r}" in updatable
    assert "cgImage: image, orientation: orientation, constraint: constraint, options: options" in updatable
    assert ".cropRect: region" in updatable and "VNImageCropAndScaleOption.scaleFill.rawValue" in updatable
    assert ".centerCrop" not in updatable
    assert "imageValue(example.image, orientation: example.orientation)" in updatable
    assert "func classify(\n        _ image: CGImage, orientation: CGImagePropertyOrientation" in updatable


def test_updated_model_lives_in_application_support_per_export() -> None:
    updatable = swift_updatable("knn", DATA_CONFIG, ("a", "b"))
    assert ".applicationSupportDirectory" in updatable and ".documentDirectory" not in updatable
    assert "Self.exportId(saved) == Self.exportId(shipped)" in updatable
    assert 'static let exportIdKey = "export_id"' in updatable


@pytest.mark.skipif(shutil.which("swiftc") is None, reason="no Swift toolchain (swiftc) on this machine")
def test_swift_parses(tmp_path: Path) -> None:
    sources = {
        "Classifier.swift": swift_classifier(PACKAGE, DATA_CONFIG),
        "ClassifierTests.swift": swift_tests(PACKAGE, None),
        SWIFT_NAME: swift_updatable("head", DATA_CONFIG, ("a", "b")),
    }
    for name, text in sources.items():
        (tmp_path / name).write_text(text)
        subprocess.run(["swiftc", "-parse", str(tmp_path / name)], check=True, capture_output=True)


def test_card_says_how_it_was_trained_and_what_stops_a_release() -> None:
    """'Fine-tuned from an ImageNet backbone' only for pretrained runs; the start, epochs, images and size
    are stated; a top-1 near chance and the license placeholder are flagged on the first screen."""
    assert run_description(PRETRAINED_DESCRIPTION, False) == SCRATCH_DESCRIPTION
    assert run_description(PRETRAINED_DESCRIPTION, "/weights.pth") == PRETRAINED_DESCRIPTION
    assert run_description("my own words", False) == "my own words"
    meta = {"backbone": "mobilenet_v2", "pretrained": False, "epochs": 2, "train_images": 450}
    meta["image_size"] = 64
    assert trained_lines(meta)[0] == (
        "- mobilenet_v2 trained from scratch (no pretrained weights), 2 epoch(s) on 450 training images at "
        "64 px."
    )
    assert "from ImageNet-pretrained weights" in trained_lines({**meta, "pretrained": True})[0]
    manifest = {"val_images": 90, "pytorch_val_top1": 0.4, "classes": ["a", "b", "c"]}
    manifest["license"] = LICENSE_UNSET
    text = "\n".join(warnings(manifest))
    assert "val top-1 40.0% is near chance (33.3% for 3 classes) on 90 images" in text
    assert "License not set" in text
    assert warnings({**manifest, "pytorch_val_top1": 0.9, "license": "MIT"}) == []
