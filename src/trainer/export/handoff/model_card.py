"""The model card (README.md in the export folder), in the order an app developer needs it: what stops a
release, what to add and call (card_start.py), which variant to ship, then the figures, each labelled with
where it was measured, then the details (classes, inputs, preprocessing, quantization, training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.data.data_config import DataConfig
from trainer.export.handoff.android_card import litert_preprocessing, mobile_inputs
from trainer.export.handoff.card_start import android_start, ios_start, warnings, which_variant
from trainer.export.handoff.confidence import accuracy_text
from trainer.export.handoff.escape import markdown_text
from trainer.export.handoff.golden import GOLDEN_JSON, TOLERANCE
from trainer.export.handoff.names import (
    CARD_NAME,
    LABELS_NAME,
    SIMULATION_NOTE,
    SWIFT_NAME,
    UPDATABLE_SWIFT_NAME,
    swift_package,
    tflite_model,
)
from trainer.export.handoff.not_sure import not_sure_section
from trainer.export.manifest import ArtifactEntry
from trainer.export.verify import different_answers
from trainer.utils.files import write_text


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _artifact_rows(manifest: dict[str, Any]) -> list[str]:
    rows = [
        "| file | format | precision | size | val top-1 (95% Wilson interval) | top-1 agreement with PyTorch "
        "| latency on the export host's CPU, batch 1 (not a phone) | gate |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
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
            f"| {agreement} | {latency} | {_gate_text(a.get('gate')).split(' (')[0]} |"
        )
    return rows


def _preprocessing(prep: DataConfig, *, litert: bool) -> list[str]:
    """The measured preprocessing, and how the app reproduces it (the choice, stated for the developer)."""
    if prep.crop_mode == "squash":
        region = f"the centred {prep.crop_fraction:.4f} of the upright image's width and height"
    else:
        region = f"the centred square of side {prep.crop_fraction:.4f} x the upright image's shorter side"
    return [
        "### Preprocessing: the app does what was measured",
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
        *(litert_preprocessing(prep) if litert else []),
        "",
    ]


def _gate_text(check: dict[str, Any] | None) -> str:
    """The verdict of the gate that ran on an artifact, as every section of the card states it."""
    if check is None:
        return "no gate"
    if check["passed"]:
        return f"gate {check['rule']}: passed"
    p_value = f", sign-test p {check['p_value']}" if "p_value" in check else ""
    warning = ", a warning" if check.get("on_failure") == "warning" else ""
    return f"gate {check['rule']}: FAILED (measured {check['value']}{p_value}{warning})"


def _agreement_text(check: dict[str, Any] | None) -> str:
    """A smaller copy's agreement gate (verify.agreement_gate) in the words a user needs."""
    if check is None:
        return ""
    verdict = "passed" if check["passed"] else "**FAILED**"
    return f"; agreement gate {check['rule']}: {verdict}: {different_answers(check)}"


def model_card(manifest: dict[str, Any]) -> str:
    """README.md for app developers, written from the manifest so the two never disagree."""
    classes, size = manifest["classes"], manifest["image_size"]
    prep = DataConfig.from_dict(manifest["preprocess"])
    meta = manifest.get("metadata", {})
    reasons = sorted({a["reason"] for a in manifest["artifacts"] if a.get("reason")})
    package, tflite = swift_package(manifest["artifacts"]), tflite_model(manifest["artifacts"])
    lines = [
        f"# {meta.get('backbone', 'Image')} classifier: {len(classes)} classes",
        "",
        manifest["description"],
        "",
        *warnings(manifest),
        "## Add it to your app",
        "",
        *(ios_start(manifest, package) if package else []),
        *(android_start(tflite) if tflite else []),
        *([] if package or tflite else ["No Core ML or LiteRT classifier was exported: see below.", ""]),
        *which_variant(manifest, package, tflite),
        "## Figures",
        "",
        f"Measured on this export's host, not on a phone: {manifest['val_images']} validation images, CPU "
        f"latency with {manifest.get('threads') or '?'} thread(s). PyTorch itself scores "
        f"{accuracy_text(manifest['pytorch_val_top1'], manifest['val_images'])} top-1 on them. Core ML does "
        "not run on Linux: where the runtime below says so, its packages were run by the reference executor "
        "(their own ops and fp16 rounding), so their latency is n/a.",
        "",
        *_artifact_rows(manifest),
        "",
        *[f"n/a: {r}." for r in reasons],
    ]
    if manifest["skipped"]:
        lines += ["", "Not produced:", "", *[f"- {s['name']}: {s['reason']}" for s in manifest["skipped"]]]
    if manifest["errors"]:
        errors = [f"- {e['artifact']}: {e['error']}" for e in manifest["errors"]]
        lines += ["", "**Export errors:**", "", *errors]
    lines += [
        "",
        *not_sure_section(meta),
        *_quantization_lines(manifest),
        *_updatable_section(manifest),
        "## Details",
        "",
        f"- Author: {markdown_text(manifest['author'])}",
        f"- License: {markdown_text(manifest['license'])}",
        f"- Version: {manifest['version']}",
        f"- Golden photos (`{GOLDEN_JSON}`): the cases that break apps (landscape, portrait, EXIF-rotated, "
        "non-square, a near-tie) with each artifact's probabilities measured here; the generated tests allow "
        f"{TOLERANCE} per probability, since the phones resample with their own filters.",
        "",
        f"### Classes ({len(classes)})",
        "",
        *[f"{i}. {markdown_text(c)}" for i, c in enumerate(classes)],
        "",
        f"`{LABELS_NAME}` lists them in output order; the app code reads it (or the model's labels) at run "
        "time.",
        "",
        "### Input",
        "",
        f"- **Core ML** (`.mlpackage`): an RGB image of {size}x{size} pixels, raw 0-255 values: the "
        "normalization is built into the model. Outputs `classLabel` (best class) and `classLabel_probs` "
        "(probability per class).",
        f"- **ONNX / TorchScript**: float32 tensor `image` of shape (N, 3, {size}, {size}), RGB, "
        f"(pixel / 255 - mean) / std with mean {list(prep.mean)} and std {list(prep.std)}. Output `logits` "
        "(N, classes); apply softmax for probabilities.",
        *mobile_inputs(manifest),
        "",
        *_preprocessing(prep, litert=tflite is not None),
        "### How it was trained",
        "",
        *trained_lines(meta),
        "",
    ]
    if package:
        lines += [
            f"Xcode's model preview accepts dragged-in photos, but crops them its own way; `{SWIFT_NAME}` "
            "crops as measured.",
            "",
        ]
    return "\n".join(lines)


def trained_lines(meta: dict[str, Any]) -> list[str]:
    """How the model was trained (start, epochs, images, size) first, then the rest of the run's metadata
    with its accuracies' intervals."""
    pretrained = meta.get("pretrained")
    start = (
        "from scratch (no pretrained weights)"
        if pretrained is False
        else "from ImageNet-pretrained weights"
        if pretrained is True
        else f"from the weights in {pretrained}"
        if pretrained
        else "unknown start (not recorded)"
    )
    lines = [
        f"- {meta.get('backbone', 'model')} trained {start}, {meta.get('epochs', '?')} epoch(s) on "
        f"{meta.get('train_images', '?')} training images at {meta.get('image_size', '?')} px.",
    ]
    shown = {"pretrained", "epochs", "train_images", "image_size", "backbone"}
    for key, value in meta.items():
        if key in shown:
            continue
        if key in ("val_top1", "val_top3", "val_top5") and isinstance(value, float):
            value = accuracy_text(value, meta.get("val_images"))
        lines.append(f"- {key}: {value}")
    return lines


def _quantization_lines(manifest: dict[str, Any]) -> list[str]:
    """How each smaller copy fared on the val images: its top-1 drop against its own format's fp32 artifact
    (Core ML: against fp32 PyTorch), the verdict of the gate that ran on it, and its agreement gate: how
    often it answers differently from the fp32 PyTorch model."""
    lines = []
    for a in map(ArtifactEntry.from_dict, manifest["artifacts"]):
        if a.top1_drop_vs_fp32 is not None:
            drop, against, agreement = a.top1_drop_vs_fp32, "its fp32 artifact", a.top1_agreement_vs_fp32
        elif a.top1_drop_vs_pytorch is not None and a.precision != "fp32":
            drop, against, agreement = a.top1_drop_vs_pytorch, "fp32 PyTorch", a.top1_agreement
        else:
            continue
        lines.append(
            f"- `{a.path}`: {drop:+.1f} points of val top-1 lost against {against}, top-1 agreement with it "
            f"{_pct(agreement)}; {_gate_text(a.gate)}{_agreement_text(a.agreement_gate)}."
        )
    return ["## Quantization on these images", "", *lines, ""] if lines else []


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
