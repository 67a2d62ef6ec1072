"""LiteRT (.tflite) and ExecuTorch (.pte) export, each run in its own runtime (the [mobile] extra).

One module-scoped export of the briefly trained MobileNetV2 (width 0.5, 64 px) covers the artifacts, the
gates, the metadata, Classifier.kt and trainer-predict; the failure rules use the tiny conv net. Without the
extra the formats are skipped with the install command (test_absent_extra_is_skipped_with_the_reason).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from test_export import (
    CLASSES,
    DATA_CONFIG,
    MEAN,
    METADATA,
    SIZE,
    STD,
    entry,
    export_config,
    make_images,
    small_export,
    stored_metadata,
    synthetic_job,
    train,
)
from test_predict import pytorch_probabilities
from torchvision import transforms as T

from trainer.data.images import load_rgb
from trainer.data.transforms import eval_transform
from trainer.export.converters import executorch as executorch_format
from trainer.export.converters.litert import export as litert
from trainer.export.converters.litert import flatbuffer as litert_flatbuffer
from trainer.export.converters.litert import standard_metadata
from trainer.export.formats import FORMATS, Format
from trainer.export.job import MAX_INT8_TOP1_DROP
from trainer.export.pipeline import export_all
from trainer.export.predict import predict_images
from trainer.export.verify import OWN_FIGURES, load_inputs

MOBILE = ["litert", "executorch"]
MISSING = {name: FORMATS[name].missing() for name in MOBILE}
needs_mobile = pytest.mark.skipif(any(MISSING.values()), reason=f"[mobile] extra not installed: {MISSING}")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """litert fp32/fp16/int8 and executorch fp32/int8 of one trained model, verified on 24 images."""
    if any(MISSING.values()):
        pytest.skip(f"[mobile] extra not installed: {MISSING}")
    root = tmp_path_factory.mktemp("mobile")
    train_samples = make_images(root / "train", per_class=16, seed=0)
    val_samples = make_images(root / "val", per_class=8, seed=1)
    torch.manual_seed(0)
    model = train(torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=len(CLASSES)), train_samples)
    manifest = export_all(
        model,
        classes=CLASSES,
        data_config=DATA_CONFIG,
        out_dir=root / "export",
        cfg=export_config(formats=MOBILE),
        calibration_paths=[p for p, _ in train_samples],
        val_samples=val_samples,
        provenance=METADATA,
    )
    calibration = [p for p, _ in train_samples]
    return {
        "cfg": export_config(formats=MOBILE),
        "manifest": manifest,
        "out": root / "export",
        "model": model,
        "val": val_samples,
        "calibration": calibration,
    }


def test_every_precision_is_exported_and_listed(exported: dict) -> None:
    manifest, out = exported["manifest"], exported["out"]
    assert manifest["errors"] == [] and manifest["warnings"] == []
    names = {a["name"]: (a["format"], a["precision"]) for a in manifest["artifacts"]}
    assert names == {
        "model.tflite": ("litert", "fp32"),
        "model_fp16.tflite": ("litert", "fp16"),
        "model_int8.tflite": ("litert", "int8"),
        "model.pte": ("executorch", "fp32"),
        "model_int8.pte": ("executorch", "int8"),
    }
    handoff = ["golden.json", "golden", "labels.txt", "Classifier.kt", "ClassifierTest.kt", "README.md"]
    assert manifest["handoff"] == handoff
    assert all((out / name).exists() for name in [*names, *manifest["handoff"]])
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_every_artifact_carries_the_metadata(exported: dict) -> None:
    """The .tflite files read back by the flatbuffer reader, the .pte files by ExecuTorch's runtime."""
    out, cfg = exported["out"], exported["cfg"]
    for name in ("model.tflite", "model_fp16.tflite", "model_int8.tflite"):
        stored_metadata(litert_flatbuffer.read_metadata(out / name), cfg)
    for name in ("model.pte", "model_int8.pte"):
        stored_metadata(executorch_format.read_metadata(out / name), cfg)


def test_fp32_artifacts_agree_with_pytorch_in_their_runtimes(exported: dict) -> None:
    manifest = exported["manifest"]
    for name in ("model.tflite", "model.pte"):
        figures = entry(manifest, name)
        assert figures["top1_agreement"] >= 0.995, name
        assert figures["max_abs_diff"] <= figures["tolerance"], name
        assert figures["val_top1"] == pytest.approx(manifest["pytorch_val_top1"]), name
        assert figures["latency_ms"] > 0 and figures["threads"] == 1


def test_quantized_copies_are_smaller_and_within_the_gate(exported: dict) -> None:
    manifest = exported["manifest"]
    for fp32, small, ratio in [
        ("model.tflite", "model_fp16.tflite", 0.55),
        ("model.tflite", "model_int8.tflite", 0.4),
        ("model.pte", "model_int8.pte", 0.4),
    ]:
        figures = entry(manifest, small)
        assert figures["size_bytes"] < ratio * entry(manifest, fp32)["size_bytes"], small
        assert figures["top1_drop_vs_fp32"] <= MAX_INT8_TOP1_DROP, small
        assert figures["top1_agreement_vs_fp32"] >= 0.95, small
    assert entry(manifest, "model_int8.tflite")["calibration_images"] == 48


def test_int8_tflite_output_range_covers_the_fp32_logits(exported: dict) -> None:
    """The int8 output tensor (before the float DEQUANTIZE) can hold every logit the fp32 model gives on the
    calibration images: calibrated with a moving average of per-image ranges, it clipped real photos'
    logits to about half their range and capped the confidences (issue #11)."""
    from ai_edge_litert.interpreter import Interpreter

    inputs, _, _ = load_inputs(exported["calibration"], DATA_CONFIG)
    logits = litert.litert_predictor(exported["out"] / "model.tflite", MEAN, STD, 1)(inputs)
    int8 = Interpreter(model_path=str(exported["out"] / "model_int8.tflite"))
    (output,) = int8.get_output_details()
    details = {d["name"]: d for d in int8.get_tensor_details()}
    scale, zero_point = details[output["name"] + "_int8"]["quantization"]
    low, high = (-128 - zero_point) * scale, (127 - zero_point) * scale
    assert low - scale <= logits.min() and logits.max() <= high + scale, (
        low,
        high,
        logits.min(),
        logits.max(),
    )


def test_tflite_interface_and_metadata(exported: dict) -> None:
    """Run directly with the LiteRT interpreter as the app does: float NHWC raw pixels in (int8 too), logits
    out; the fp32 logits are PyTorch's on the same image. Classes and mean/std are in the metadata."""
    from ai_edge_litert.interpreter import Interpreter

    path, _ = exported["val"][0]
    upright = load_rgb(path)  # the app's steps, written out: resize the shorter side to 72, centre crop 64
    pixels = np.asarray(T.CenterCrop(SIZE)(T.Resize(72)(upright)), np.float32)[None]
    with torch.no_grad():
        expected = exported["model"](eval_transform(DATA_CONFIG)(upright)[None]).numpy()
    for name in ("model.tflite", "model_fp16.tflite", "model_int8.tflite"):
        interpreter = Interpreter(model_path=str(exported["out"] / name))
        interpreter.allocate_tensors()
        (image_in,), (logits_out,) = interpreter.get_input_details(), interpreter.get_output_details()
        assert list(image_in["shape"]) == [1, SIZE, SIZE, 3] and image_in["dtype"] == np.float32, name
        assert list(logits_out["shape"]) == [1, len(CLASSES)] and logits_out["dtype"] == np.float32, name
        interpreter.set_tensor(image_in["index"], pixels)
        interpreter.invoke()
        logits = interpreter.get_tensor(logits_out["index"])
        if name == "model.tflite":
            np.testing.assert_allclose(logits, expected, atol=1e-3 * max(1.0, float(np.abs(expected).max())))
        path = exported["out"] / name
        standard = standard_metadata.read(
            path, litert_flatbuffer.metadata_buffer(path, litert_flatbuffer.STANDARD_NAME)
        )
        assert (
            standard["labels"] == CLASSES
            and standard["output"]["labels_type"] == standard_metadata.LABELS_FILE_TYPE
        )
        assert standard["input"] == {  # raw RGB pixels of the model's size: the normalization is in the graph
            "name": "image",
            "content": standard_metadata.IMAGE_PROPERTIES,
            "color_space": standard_metadata.RGB,
            "size": [SIZE, SIZE],
            "normalization": {"mean": [0.0], "std": [1.0]},
        }
        metadata = litert_flatbuffer.read_metadata(path)
        assert (
            metadata["classes"] == CLASSES and metadata["mean"] == list(MEAN) and metadata["std"] == list(STD)
        )
        assert metadata["backbone"] == "mobilenet_v2" and metadata["precision"] in name.replace(".", "_fp32.")
        figures = entry(exported["manifest"], name)  # its own figures, measured before they were written
        for key in OWN_FIGURES:
            assert metadata.get(key) == figures.get(key), (name, key)
        assert metadata["pytorch_val_top1"] == METADATA["val_top1"], name
        assert metadata["measured_by"] == litert.RUNTIME, name
        assert figures["sha256"] == hashlib.sha256((exported["out"] / name).read_bytes()).hexdigest()
    int8 = Interpreter(model_path=str(exported["out"] / "model_int8.tflite"))
    assert np.int8 in {d["dtype"] for d in int8.get_tensor_details()}, "int8 weights and activations inside"


def test_kotlin_snippet_and_card(exported: dict) -> None:
    out = exported["out"]
    kotlin = (out / "Classifier.kt").read_text()
    for text in [
        "import org.tensorflow.lite.Interpreter",
        'modelAsset: String = "model.tflite"',
        "com.google.ai.edge.litert:litert:",
        "Bitmap.createScaledBitmap(scaled, width, height, true)",
        "* 72 / short",  # the eval Resize(72) of the shorter side
        "round((bitmap.width - 64) / 2.0)",  # then CenterCrop(64), offsets rounded half to even
        "import kotlin.math.round",  # kotlin.math has no rint: test_handoff_code compiles the file
        "labels.txt",
        "Do NOT normalize",
        "bitmap.copy(Bitmap.Config.ARGB_8888, false)",  # getPixels throws on HARDWARE bitmaps
        "fun classify(uri: Uri, topK: Int = 3)",  # photos decoded upright by their EXIF orientation
        "decoder.allocator = ImageDecoder.ALLOCATOR_SOFTWARE",
        "ExifInterface.ORIENTATION_TRANSVERSE",
        "androidx.exifinterface:exifinterface:",
    ]:
        assert text in kotlin, text
    assert "then (pixel / 255 - mean) / std" not in kotlin, "normalization is not a step the app takes"
    for opening, closing in ["{}", "()", "[]"]:
        assert kotlin.count(opening) == kotlin.count(closing), opening + closing
    card = (out / "README.md").read_text()
    for text in [
        "### Android (LiteRT)",
        "Classifier.kt",
        "NHWC",
        "## Quantization on these images",
        "Do NOT normalize them",
        "halves with a bilinear filter",
        "androidx.exifinterface:exifinterface:",
        "classifier.classify(uri)",
        "minSdk 21",
    ]:
        assert text in card, text
    assert "`model_int8.tflite`" in card and "`model_int8.pte`" in card


@pytest.mark.parametrize("artifact", ["model.tflite", "model.pte"])
def test_trainer_predict_runs_tflite_and_pte(exported: dict, artifact: str) -> None:
    images = [Path(p) for p, _ in exported["val"][:3]]
    for image, top in predict_images(exported["out"] / artifact, images, top_k=3):
        expected = pytorch_probabilities(exported["model"], image)
        assert [label for label, _ in top] == sorted(expected, key=expected.get, reverse=True)
        for label, probability in top:
            assert probability == pytest.approx(expected[label], abs=1e-3)


@needs_mobile
def test_fp32_gate_fails_a_model_that_computes_something_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_convert = litert._convert
    monkeypatch.setattr(litert, "_convert", lambda module, size: real_convert(_Shifted(module), size))
    manifest = small_export(tmp_path, export_config(formats=["litert"], **{"litert.fp16": False}))
    errors = {e["artifact"]: e["error"] for e in manifest["errors"]}
    assert "exceeds" in errors["model.tflite"]


class _Shifted(torch.nn.Module):
    """The wrapped model plus 100 on the first logit: not what PyTorch computes."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        return out + 100.0 * (torch.arange(out.shape[1]) == 0)


def test_int8_gate_warns_past_one_point_when_it_is_not_chance(tmp_path: Path) -> None:
    """The gate every quantized copy (ONNX, LiteRT, ExecuTorch int8) goes through: a drop over one point
    warns, unless it is a photo or two that the sign test cannot tell from chance."""
    labels = np.array([0, 1, 2, 0] * 3)
    job = synthetic_job(tmp_path, labels)
    fp32 = np.eye(3, dtype=np.float32)[labels]
    one_photo = np.eye(3, dtype=np.float32)[[0, 1, 2, 0] * 2 + [0, 1, 2, 1]]
    close, chance, wrong = {}, {}, {}
    job.compare_with_fp32("litert_int8", close, fp32, fp32 + 0.01)
    job.compare_with_fp32("onnx_int8", chance, fp32, one_photo)
    job.compare_with_fp32("executorch_int8", wrong, fp32, np.eye(3, dtype=np.float32)[[0] * 12])
    assert close == {
        "answers_changed_vs_fp32": [],
        "top1_agreement_vs_fp32": 1.0,
        "top1_drop_vs_fp32": 0.0,
        "top1_images_lost_gained": [0, 0],
        "top1_drop_p_value": 1.0,
        "gate": {
            "rule": "top1_drop_vs_fp32 <= 1.0 or sign-test p >= 0.05",
            "value": 0.0,
            "passed": True,
            "p_value": 1.0,
            "on_failure": "warning",
        },
    }
    assert chance["top1_drop_vs_fp32"] == 8.333 and chance["top1_drop_p_value"] == 0.5
    assert wrong["top1_drop_vs_fp32"] == 50.0 and wrong["top1_images_lost_gained"] == [6, 0]
    assert job.warnings == [
        "executorch_int8 loses 50.00 points of val top-1 against fp32 (> 1.0; sign-test p 0.0156)"
    ]


@needs_mobile
def test_converter_error_is_recorded_and_other_formats_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("converter cannot lower aten::foo")

    monkeypatch.setattr(litert, "_convert", broken)
    cfg = export_config(formats=["onnx", "litert"], **{"onnx.int8": False})
    manifest = small_export(tmp_path, cfg)
    assert manifest["errors"] == [
        {"artifact": "litert_fp32", "error": "RuntimeError: converter cannot lower aten::foo"}
    ]
    assert [a["name"] for a in manifest["artifacts"]] == ["model.onnx"]
    skipped = {s["name"]: s["reason"] for s in manifest["skipped"]}
    assert "LiteRT fp32 export failed" in skipped["litert_int8"] and "Classifier.kt" in skipped


def test_absent_extra_is_skipped_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        Format, "missing", lambda self: f'{self.name} not installed: pip install -e ".[mobile]"'
    )
    manifest = small_export(tmp_path, export_config(formats=["litert", "executorch"]))
    assert manifest["errors"] == [] and manifest["artifacts"] == []
    skipped = {s["name"]: s["reason"] for s in manifest["skipped"]}
    assert '.[mobile]"' in skipped["litert"] and '.[mobile]"' in skipped["executorch"]
