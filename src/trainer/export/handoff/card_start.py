"""The model card's first screen, for an app developer's first five minutes: warnings that stop a release
(a model near chance, no license), what to add to the project with the minimum OS and tool versions, the code
to call, how to prove it on the device, and which variant to ship and why."""

from __future__ import annotations

from typing import Any

from trainer.export.handoff.confidence import wilson_interval
from trainer.export.handoff.golden import GOLDEN_DIR, GOLDEN_JSON
from trainer.export.handoff.names import (
    EXIFINTERFACE_DEPENDENCY,
    KOTLIN_NAME,
    KOTLIN_TEST_NAME,
    LABELS_NAME,
    LITERT_DEPENDENCY,
    SWIFT_NAME,
    SWIFT_TEST_NAME,
    UPDATABLE_SWIFT_NAME,
    xcode_class_name,
)
from trainer.export.handoff.swift import swift_availability
from trainer.export.job import MAX_INT8_TOP1_DROP
from trainer.export.settings import LICENSE_UNSET

ANDROID_MIN_SDK = 21  # LiteRT's Interpreter API; Classifier.kt uses ImageDecoder from API 28 (28+)
KOTLIN_MIN = "1.3"  # the suite compiles Classifier.kt with Debian's kotlinc 1.3


def warnings(manifest: dict[str, Any]) -> list[str]:
    """Lines that must be read before shipping: top-1 not clearly above chance, license placeholder."""
    lines = []
    n, top1 = manifest["val_images"], manifest.get("pytorch_val_top1")
    chance = 1 / max(1, len(manifest["classes"]))
    if n and top1 is not None and wilson_interval(round(top1 * n), n)[0] <= chance + 0.05:
        lines.append(
            f"> **Warning: val top-1 {100 * top1:.1f}% is near chance ({100 * chance:.1f}% for "
            f"{len(manifest['classes'])} classes) on {n} images.** This model has not learned the task well "
            "enough to ship: train longer, on more photos, or from pretrained weights."
        )
    if manifest["license"] == LICENSE_UNSET:
        lines.append(
            "> **License not set** (the placeholder `export.license` ships in every file): set it to your "
            "terms before distributing the model."
        )
    return [part for line in lines for part in (line, "")]


def _coreml_target(manifest: dict[str, Any], package: str) -> str | None:
    entry = next((a for a in manifest["artifacts"] if a["path"] == package), {})
    return entry.get("minimum_deployment_target")


def ios_start(manifest: dict[str, Any], package: str) -> list[str]:
    """iOS: files, minimum versions, the call, the golden test."""
    ios, macos = swift_availability(_coreml_target(manifest, package))
    return [
        "### iOS / macOS (Core ML)",
        "",
        f"- **Requires** iOS {ios}+ / macOS {macos}+ (the model's deployment target), Xcode 15+, Swift 5.9+.",
        f"- **Add** `{package}` and `{SWIFT_NAME}` to your app target.",
        "- **Call** (the photo's EXIF orientation is applied; it runs off the main thread):",
        "",
        "```swift",
        "let classifier = try Classifier()",
        "let top = try await classifier.classify(contentsOf: photoURL)  // or classify(uiImage)",
        'print(top.first?.label ?? "", top.first?.confidence ?? 0)',
        "```",
        "",
        f"- **Prove it on the device**: add `{SWIFT_TEST_NAME}`, `{GOLDEN_JSON}` and the `{GOLDEN_DIR}/` "
        "folder (as a folder reference) to your unit-test target and run it: it classifies the golden "
        "photos and compares with what this export measured.",
        "",
    ]


def android_start(tflite: str) -> list[str]:
    """Android: files, Gradle lines, minimum versions, the call, the instrumented test."""
    return [
        "### Android (LiteRT)",
        "",
        f"- **Requires** minSdk {ANDROID_MIN_SDK}, Kotlin {KOTLIN_MIN}+, Android Gradle Plugin 4.1+ (stores "
        "`.tflite` assets uncompressed, which the memory-mapped load needs).",
        f"- **Add** `{tflite}` and `{LABELS_NAME}` to `app/src/main/assets`, `{KOTLIN_NAME}` to your sources "
        "(change its `package` line), and to `build.gradle.kts`:",
        "",
        "```kotlin",
        f'implementation("{LITERT_DEPENDENCY}")',
        f'implementation("{EXIFINTERFACE_DEPENDENCY}")',
        "```",
        "",
        "- **Call** (off the main thread; the photo's EXIF orientation is applied):",
        "",
        "```kotlin",
        "val classifier = Classifier(context)  // keep one; close() when done",
        "val top = classifier.classify(uri)  // or classify(uprightBitmap)",
        "```",
        "",
        f"- **Prove it on the device**: put `{KOTLIN_TEST_NAME}` in `app/src/androidTest/java/...`, "
        f"`{GOLDEN_JSON}` and `{GOLDEN_DIR}/` in `app/src/androidTest/assets`, and run it as a connected "
        "test.",
        "",
    ]


def _drop(artifact: dict[str, Any]) -> float | None:
    """Points of val top-1 lost against its fp32 artifact (Core ML: against fp32 PyTorch)."""
    drop = artifact.get("top1_drop_vs_fp32")
    return artifact.get("top1_drop_vs_pytorch") if drop is None else drop


def _smaller_passing(candidates: list[dict[str, Any]], default: dict[str, Any]) -> dict[str, Any] | None:
    """The smallest variant whose drop against fp32 is within the gate (its own, else the int8 one)."""
    passing = []
    for a in candidates:
        drop, gate = _drop(a), a.get("gate")
        ok = gate["passed"] if gate else drop is not None and drop <= MAX_INT8_TOP1_DROP
        if ok and a["size_bytes"] < default["size_bytes"]:
            passing.append(a)
    return min(passing, key=lambda a: a["size_bytes"], default=None)


def _advice(rows: list[dict[str, Any]], default: dict[str, Any], switch: str) -> str:
    smaller = _smaller_passing([a for a in rows if a is not default], default)
    base = f"`{default['path']}` ({default['size_bytes'] / 1e6:.2f} MB) is what the code loads"
    if smaller is None:
        return f"{base}; no smaller variant passed its accuracy gate here: ship it."
    drop = _drop(smaller)
    lost = "no" if not drop else f"{drop:+.1f} points of"
    return (
        f"{base}. `{smaller['path']}` is {default['size_bytes'] / smaller['size_bytes']:.1f}x smaller and "
        f"lost {lost} val top-1 against fp32 here: ship it if the figures below hold for you ({switch})."
    )


def which_variant(manifest: dict[str, Any], package: str | None, tflite: str | None) -> list[str]:
    """Which file to ship per platform, and how to switch."""
    classifiers = [a for a in manifest["artifacts"] if a["kind"] == "classifier"]
    lines = ["## Which variant to ship", ""]
    if package:
        coreml = [a for a in classifiers if a["format"] == "coreml"]
        default = next(a for a in coreml if a["path"] == package)
        switch = (
            f"add that package instead and replace `{xcode_class_name(package)}(` in `{SWIFT_NAME}` with its "
            "class name, the file name without `.mlpackage`"
        )
        lines.append("- **iOS**: " + _advice(coreml, default, switch))
    if tflite:
        litert = [a for a in classifiers if a["format"] == "litert"]
        default = next(a for a in litert if a["path"] == tflite)
        switch = 'pass its name: `Classifier(context, "NAME")`'
        lines.append("- **Android**: " + _advice(litert, default, switch))
    if any(a["kind"] == "updatable" for a in manifest["artifacts"]):
        lines.append(
            f"- **On-device learning**: `{UPDATABLE_SWIFT_NAME}` with `UpdatableClassifier.mlmodel` "
            "(iOS 13+), only if the app must learn its user's classes: it is an fp32 NeuralNetwork, larger "
            "and slower."
        )
    return [*lines, ""] if len(lines) > 2 else []
