"""export_all end to end on a briefly trained MobileNetV2 (width 0.5, 64 px) and generated photos.

The images are three visually distinct classes, so accuracy and the int8 / fp32 agreement mean something.
One module-scoped export covers every artifact; the failure rules use a tiny conv net to stay fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import coremltools as ct
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from conftest import SHARED
from omegaconf import OmegaConf
from PIL import Image, ImageDraw
from torch import nn

from trainer.cli import compose_config
from trainer.data.data_config import DataConfig
from trainer.data.images import load_rgb
from trainer.data.transforms import eval_transform
from trainer.export import manifest as manifest_module
from trainer.export.converters import onnx as onnx_format
from trainer.export.converters import torchscript as torchscript_format
from trainer.export.converters.coreml import convert as coreml_convert
from trainer.export.converters.coreml import spec as coreml_spec
from trainer.export.converters.coreml import target as coreml_target
from trainer.export.converters.coreml.gates import RUNTIME
from trainer.export.converters.torchscript import lite_unavailable_reason
from trainer.export.handoff.escape import markdown_text
from trainer.export.handoff.names import xcode_class_name
from trainer.export.handoff.try_page.runtime import FETCH_COMMAND, missing_reason
from trainer.export.job import ExportJob
from trainer.export.manifest import sha256, size_bytes
from trainer.export.metadata import ArtifactMetadata, as_json
from trainer.export.pipeline import export_all
from trainer.export.settings import ExportSettings
from trainer.export.verify import sign_test
from trainer.utils.files import atomic_output

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["red_disc", "green_bar", "blue_ring"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # unequal stds: exercises the Core ML correction
SIZE = 64
DATA_CONFIG = DataConfig(  # resize the shorter side to 72, center crop 64
    size=SIZE, interpolation="bilinear", crop_pct=SIZE / 72, crop_mode="center", mean=MEAN, std=STD
)
METADATA = {
    "backbone": "mobilenet_v2",
    "alpha": 0.5,
    "dataset": "generated",
    "val_top1": 0.9,
    "config_hash": "c0ffee",
}
HYMENOPTERA = SHARED / "data" / "hymenoptera"


pytestmark = pytest.mark.usefixtures("one_thread")


def draw(label: int, rng: np.random.Generator) -> Image.Image:
    """A noisy 80x72 photo of a red disc, a green bar or a blue ring at a random place."""
    img = Image.fromarray(rng.integers(60, 190, size=(72, 80, 3), dtype=np.uint8))
    pen = ImageDraw.Draw(img)
    x, y, r = (int(v) for v in (rng.integers(25, 55), rng.integers(25, 47), rng.integers(14, 22)))
    if label == 0:
        pen.ellipse([x - r, y - r, x + r, y + r], fill=(230, 30, 30))
    elif label == 1:
        pen.rectangle([x - r, 5, x + r // 2, 67], fill=(30, 210, 40))
    else:
        pen.ellipse([x - r, y - r, x + r, y + r], outline=(30, 40, 230), width=6)
    return img


def make_images(root: Path, per_class: int, seed: int) -> list[tuple[str, int]]:
    """Write JPEGs and PNGs under root/<class>/ and return (path, label) pairs."""
    rng = np.random.default_rng(seed)
    samples = []
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = root / name / f"{i}.{'png' if i % 2 else 'jpg'}"
            draw(label, rng).save(path)
            samples.append((str(path), label))
    return samples


def tiny_net(features: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, features, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(features, len(CLASSES)),
    ).eval()


def export_config(**overrides: object) -> OmegaConf:
    """The composed `export` node (conf/export/default.yaml on its schema) with fast latency settings and
    dotted-key overrides."""
    cfg = compose_config([]).export
    cfg.latency.runs, cfg.latency.warmup = 3, 1
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def synthetic_job(tmp_path: Path, labels: np.ndarray, **overrides: object) -> ExportJob:
    """An export job over `labels` (one blank image each) whose fp32 reference picks each label: for tests of
    the gates a quantized copy's outputs go through (ExportJob.compare_with_fp32)."""
    return ExportJob(
        model=torch.nn.Identity(),
        classes=CLASSES,
        data_config=DATA_CONFIG,
        out_dir=tmp_path,
        settings=ExportSettings.from_config(export_config(**overrides)),
        inputs=np.zeros((len(labels), 3, SIZE, SIZE), np.float32),
        labels=labels,
        reference=np.eye(3, dtype=np.float32)[labels],
        example=torch.zeros(1, 3, SIZE, SIZE),
        model_metadata={},
        read_calibration=lambda: np.zeros((0, 3, SIZE, SIZE), np.float32),
        threads=1,
    )


def train(model: nn.Module, samples: list[tuple[str, int]], steps: int = 60) -> nn.Module:
    """A few Adam steps, then BatchNorm statistics recomputed on the whole set so eval mode is accurate."""
    torch.manual_seed(0)
    transform = eval_transform(DATA_CONFIG)
    x = torch.stack([transform(load_rgb(p)) for p, _ in samples])
    y = torch.tensor([label for _, label in samples])
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(x), (16,))
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One full export: every format and variant, headless included."""
    root = tmp_path_factory.mktemp("export")
    train_samples = make_images(root / "train", per_class=16, seed=0)
    val_samples = make_images(root / "val", per_class=8, seed=1)
    torch.manual_seed(0)  # the initial weights must not depend on which tests ran before
    model = train(torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=len(CLASSES)), train_samples)
    headless = nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1))
    cfg = export_config(
        **{
            "torchscript.lite": True,
            "coreml.quantize": ["fp16", "int8", "palettize6", "w8a8"],
            "headless": True,
            "author": "Test Author",
            "license": "MIT",
            "version": "1.2.3",
        }
    )
    out_dir = root / "run" / "export"
    manifest = export_all(
        model,
        classes=CLASSES,
        data_config=DATA_CONFIG,
        out_dir=out_dir,
        cfg=cfg,
        calibration_paths=[p for p, _ in train_samples],
        val_samples=val_samples,
        provenance=METADATA,
        headless=headless,
    )
    return {"manifest": manifest, "out": out_dir, "model": model, "val": val_samples, "cfg": cfg}


def entry(manifest: dict, name: str) -> dict:
    return next(a for a in manifest["artifacts"] if a["name"] == name)


def test_every_artifact_exists_and_is_listed(exported: dict) -> None:
    manifest, out = exported["manifest"], exported["out"]
    assert manifest["errors"] == []
    expected = {
        "model_torchscript.pt",
        "model.onnx",
        "model_int8.onnx",
        "ImageClassifier_fp16.mlpackage",
        "ImageClassifier_int8.mlpackage",
        "ImageClassifier_palettize6.mlpackage",
        "feature_extractor.onnx",
        "FeatureExtractor_fp16.mlpackage",
    }
    if lite_unavailable_reason() is None:
        expected.add("model_mobile.ptl")
    assert {a["name"] for a in manifest["artifacts"]} == expected
    for name in expected:
        assert (out / name).exists(), name
    try_page = [] if missing_reason() else ["try.html", "try_runtime"]  # with ONNX Runtime Web in the cache
    assert manifest["handoff"] == [
        "golden.json",
        "golden",
        "labels.txt",
        "Classifier.swift",
        "ClassifierTests.swift",
        *try_page,
        "README.md",
    ]
    assert all((out / name).exists() for name in manifest["handoff"])
    if not try_page:
        assert FETCH_COMMAND in next(s["reason"] for s in manifest["skipped"] if s["name"] == "try.html")
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_manifest_top_level(exported: dict) -> None:
    manifest = exported["manifest"]
    assert manifest["classes"] == CLASSES
    assert (manifest["image_size"], manifest["mean"], manifest["std"]) == (SIZE, list(MEAN), list(STD))
    assert manifest["preprocess"] == DATA_CONFIG.to_dict()
    assert manifest["preprocess"]["resize"] == 72
    assert manifest["val_images"] == len(exported["val"]) == 24
    assert manifest["pytorch_val_top1"] >= 0.8, "the trained model should tell the generated classes apart"
    assert manifest["pytorch_latency_ms"] > 0 and manifest["threads"] == 1
    assert manifest["metadata"] == METADATA
    assert manifest["warnings"] == []


def test_mlpackage_files_have_the_usual_permissions(exported: dict) -> None:
    umask = os.umask(0)
    os.umask(umask)
    for package in exported["out"].glob("*.mlpackage"):
        modes = {
            p.relative_to(package).as_posix(): p.stat().st_mode & 0o777
            for p in package.rglob("*")
            if p.is_file()
        }
        assert "Data/com.apple.CoreML/model.mlmodel" in modes
        assert set(modes.values()) == {0o666 & ~umask}, modes


def test_sizes_and_hashes(exported: dict) -> None:
    out = exported["out"]
    for artifact in exported["manifest"]["artifacts"]:
        path = out / artifact["path"]
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        assert artifact["size_bytes"] == sum(f.stat().st_size for f in files) > 0
        assert artifact["sha256"] == sha256(path)
        if path.is_file():
            assert artifact["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_directory_hash_covers_names_and_contents(tmp_path: Path) -> None:
    package = tmp_path / "m.mlpackage"
    (package / "Data").mkdir(parents=True)
    (package / "Manifest.json").write_text("{}")
    (package / "Data" / "w.bin").write_bytes(b"\x00\x01")
    first = sha256(package)
    assert sha256(package) == first and size_bytes(package) == 4
    (package / "Data" / "w.bin").write_bytes(b"\x00\x02")
    assert sha256(package) != first
    (package / "Data" / "w.bin").write_bytes(b"\x00\x01")
    (package / "Data" / "w.bin").rename(package / "Data" / "v.bin")
    assert sha256(package) != first


def test_fp32_artifacts_agree_with_pytorch(exported: dict) -> None:
    manifest = exported["manifest"]
    names = ["model_torchscript.pt", "model.onnx"] + (
        ["model_mobile.ptl"] if lite_unavailable_reason() is None else []
    )
    for name in names:
        figures = entry(manifest, name)
        assert figures["top1_agreement"] >= 0.995, name
        assert figures["max_abs_diff"] <= min(figures["tolerance"], 1e-3), name
        assert figures["val_top1"] == pytest.approx(manifest["pytorch_val_top1"])
        assert figures["latency_ms"] > 0 and figures["threads"] == 1
    onnx_entry = entry(manifest, "model.onnx")
    assert onnx_entry["exporter"] in ("dynamo", "torchscript") and onnx_entry["opset"] >= 17


def test_onnx_interface(exported: dict) -> None:
    model = onnx.load(str(exported["out"] / "model.onnx"))
    onnx.checker.check_model(model)
    (image,), (logits,) = model.graph.input, model.graph.output
    assert (image.name, logits.name) == ("image", "logits")
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]


def test_int8_onnx_is_quantized_and_close_to_fp32(exported: dict) -> None:
    manifest = exported["manifest"]
    int8 = entry(manifest, "model_int8.onnx")
    assert int8["top1_drop_vs_fp32"] <= 1.0
    assert int8["top1_agreement_vs_fp32"] >= 0.95
    assert int8["size_bytes"] < 0.5 * entry(manifest, "model.onnx")["size_bytes"]
    ops = {node.op_type for node in onnx.load(str(exported["out"] / "model_int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_coreml_spec(exported: dict) -> None:
    out = exported["out"]
    norm = coreml_convert.ImageNormalization.from_stats(MEAN, STD)
    for variant in ("fp16", "int8", "palettize6"):
        package = out / f"ImageClassifier_{variant}.mlpackage"
        spec = ct.models.utils.load_spec(str(package))
        assert spec.WhichOneof("Type") == "mlProgram"
        (image,) = spec.description.input
        assert image.name == "image" and image.type.WhichOneof("Type") == "imageType"
        assert (image.type.imageType.width, image.type.imageType.height) == (SIZE, SIZE)
        assert spec.description.predictedFeatureName == "classLabel"
        assert spec.description.predictedProbabilitiesName == "classLabel_probs"
        meta = spec.description.metadata
        assert (meta.author, meta.license, meta.versionString) == ("Test Author", "MIT", "1.2.3")
        assert meta.shortDescription
        assert meta.userDefined["com.apple.coreml.model.preview.type"] == "imageClassifier"
        assert meta.userDefined["backbone"] == "mobilenet_v2" and meta.userDefined["config_hash"] == "c0ffee"
        assert json.loads(meta.userDefined["mean"]) == list(MEAN) and meta.userDefined["resolution"] == "64"
        kwargs = {"image_size": SIZE, "model_metadata_keys": list(METADATA)}
        assert coreml_spec.check_spec(package, norm=norm, classes=CLASSES, **kwargs) == []
        # the checker really reads labels and scale/bias: wrong expectations are reported
        wrong_order = coreml_spec.check_spec(package, norm=norm, classes=CLASSES[::-1], **kwargs)
        assert any("class labels" in p for p in wrong_order)
        other_norm = coreml_convert.ImageNormalization.from_stats((0.5,) * 3, (0.5,) * 3)
        assert any(
            "scale/bias" in p
            for p in coreml_spec.check_spec(package, norm=other_norm, classes=CLASSES, **kwargs)
        )


def test_compressed_coreml_variants_are_smaller(exported: dict) -> None:
    out = exported["out"]
    weights = {
        v: coreml_convert.weights_bytes(out / f"ImageClassifier_{v}.mlpackage")
        for v in ("fp16", "int8", "palettize6")
    }
    assert weights["fp16"] > 500_000, "the model must have enough weights for the ratios to mean something"
    assert weights["int8"] <= 0.55 * weights["fp16"]
    assert weights["palettize6"] <= 0.45 * weights["fp16"]
    manifest = exported["manifest"]
    assert entry(manifest, "ImageClassifier_int8.mlpackage")["weights_ratio_vs_fp16"] == pytest.approx(
        weights["int8"] / weights["fp16"], abs=1e-4
    )


def test_every_coreml_variant_is_measured(exported: dict) -> None:
    """The reference executor measures each package on the val images (on macOS MLModel.predict as well);
    each compressed package carries its own figures in its metadata, PyTorch's under pytorch_*."""
    manifest, out = exported["manifest"], exported["out"]
    for artifact in manifest["artifacts"]:
        if artifact["format"] != "coreml":
            continue
        assert artifact["runtime"] == RUNTIME and artifact["executor_ms_per_image"] > 0
        if sys.platform == "darwin":
            assert artifact["latency_ms"] > 0 and "val_top1" in artifact["mlmodel_predict"]
        else:
            assert artifact["latency_ms"] is None and "macOS" in artifact["reason"]
        if artifact["kind"] == "embedding":
            assert artifact["min_cosine_similarity"] > 0.99
            continue
        assert artifact["top1_agreement"] >= 0.95
        assert artifact["top1_drop_vs_pytorch"] == pytest.approx(
            100 * (manifest["pytorch_val_top1"] - artifact["val_top1"]), abs=1e-3
        )
        assert artifact["gate"]["passed"], artifact["gate"]
        meta = ct.models.utils.load_spec(str(out / artifact["path"])).description.metadata.userDefined
        assert float(meta["val_top1"]) == artifact["val_top1"]
        assert float(meta["pytorch_val_top1"]) == METADATA["val_top1"]
    fp16 = entry(manifest, "ImageClassifier_fp16.mlpackage")
    assert fp16["gate"]["rule"] == "top1_agreement_beyond_ties >= 0.995"
    assert fp16["top1_agreement_beyond_ties"] >= 0.995 and fp16["top1_agreement"] >= 0.995
    palettized = entry(manifest, "ImageClassifier_palettize6.mlpackage")
    assert palettized["gate"]["rule"] == "top1_drop_vs_pytorch <= 1.0 or sign-test p >= 0.05"
    lost, gained = palettized["top1_images_lost_gained_vs_pytorch"]
    p_value = round(sign_test(lost, gained), 4)
    assert palettized["gate"]["p_value"] == palettized["top1_drop_p_value_vs_pytorch"] == p_value
    agreement = palettized["agreement_gate"]  # compressed copies also answer to the agreement gate
    assert agreement["rule"] == "top1_agreement >= 0.95"
    assert agreement["value"] == round(palettized["top1_agreement"], 4)
    assert agreement["passed"] == (palettized["top1_agreement"] >= 0.95)
    assert fp16["agreement_gate"] is None  # fp16 answers to its own agreement gate (99.5%)
    card = (out / "README.md").read_text()
    drop = entry(manifest, "ImageClassifier_int8.mlpackage")["top1_drop_vs_pytorch"]
    assert (  # one gate per artifact, stated once: the Core ML int8 line names its own 0.5-point gate
        f"`ImageClassifier_int8.mlpackage`: {drop:+.1f} points of val top-1 lost against fp32 PyTorch"
    ) in card
    assert "gate top1_drop_vs_pytorch <= 0.5 or sign-test p >= 0.05" in card


def stored_metadata(stored: Mapping[str, Any], cfg: Any) -> None:
    """`stored` (one artifact's metadata as its runtime reads it: JSON values, or strings with JSON for
    non-strings) holds the export's metadata: labels, preprocessing, author, license, version, provenance."""
    settings = ExportSettings.from_config(cfg)
    expected = json.loads(as_json(ArtifactMetadata.build(CLASSES, DATA_CONFIG, METADATA, settings).to_dict()))
    assert expected["labels"] == CLASSES and expected["pytorch_val_top1"] == METADATA["val_top1"]
    assert expected["preprocess"] == json.loads(json.dumps(DATA_CONFIG.to_dict()))
    read = {
        key: stored[key]
        if isinstance(value, str) or not isinstance(stored[key], str)
        else json.loads(stored[key])
        for key, value in expected.items()
        if key in stored
    }
    assert read == expected


def test_every_artifact_carries_the_metadata(exported: dict) -> None:
    """TorchScript, ONNX and Core ML files, each read back by its own runtime's reader (LiteRT and ExecuTorch:
    test_mobile_export)."""
    out, cfg = exported["out"], exported["cfg"]
    assert exported["manifest"]["errors"] == []
    stored_metadata(torchscript_format.read_metadata(out / "model_torchscript.pt"), cfg)
    for name in ("model.onnx", "model_int8.onnx"):
        session = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        stored_metadata(session.get_modelmeta().custom_metadata_map, cfg)
    for name in ("ImageClassifier_fp16.mlpackage", "ImageClassifier_int8.mlpackage"):
        stored_metadata(ct.models.utils.load_spec(str(out / name)).description.metadata.userDefined, cfg)


def test_skipped_variants_give_reasons(exported: dict) -> None:
    skipped = {s["name"]: s["reason"] for s in exported["manifest"]["skipped"]}
    assert "iOS17" in skipped["coreml_w8a8"]
    assert coreml_target.w8a8_skip_reason("iOS17") is None  # calibrated in PyTorch: any OS
    if lite_unavailable_reason() is not None:
        assert "XNNPACK" in skipped["torchscript_lite"]


def test_normalization_folded_into_image_input_is_exact() -> None:
    model = tiny_net()
    norm = coreml_convert.ImageNormalization.from_stats(MEAN, STD)
    assert norm.scale == pytest.approx(1 / (255 * np.mean(STD)))
    assert norm.bias == pytest.approx([-m / s for m, s in zip(MEAN, STD, strict=True)])
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 3, SIZE, SIZE)).astype(np.float32)
    expected_input = (pixels / 255 - np.reshape(MEAN, (1, 3, 1, 1))) / np.reshape(STD, (1, 3, 1, 1))
    core_ml_input = norm.image_type_output(pixels)  # what ImageType's scale/bias alone produce
    assert np.abs(core_ml_input - expected_input).max() > 1e-2, "unequal stds: the correction must matter"
    wrapped = coreml_convert.CoreMLWrapper(model, norm, classifier=False).eval()
    with torch.no_grad():
        ours = wrapped(torch.from_numpy(core_ml_input)).numpy()
        reference = model(torch.from_numpy(expected_input.astype(np.float32))).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert coreml_convert.ImageNormalization.from_stats((0.5,) * 3, (0.5,) * 3).gain is None


def test_headless_variant(exported: dict) -> None:
    manifest, out = exported["manifest"], exported["out"]
    onnx_entry = entry(manifest, "feature_extractor.onnx")
    assert onnx_entry["kind"] == "embedding" and onnx_entry["min_cosine_similarity"] > 0.9999
    assert onnx_entry["max_abs_diff"] <= onnx_entry["tolerance"]
    graph = onnx.load(str(out / "feature_extractor.onnx")).graph
    assert graph.output[0].name == "embedding"
    assert graph.output[0].type.tensor_type.shape.dim[1].dim_value == 1280
    spec = ct.models.utils.load_spec(str(out / "FeatureExtractor_fp16.mlpackage"))
    (output,) = spec.description.output
    assert output.name == "embedding" and output.type.WhichOneof("Type") == "multiArrayType"
    assert "com.apple.coreml.model.preview.type" not in spec.description.metadata.userDefined


def test_handoff_files(exported: dict) -> None:
    out, manifest = exported["out"], exported["manifest"]
    assert (out / "labels.txt").read_text().splitlines() == CLASSES
    card = (out / "README.md").read_text()
    for text in [
        *map(markdown_text, CLASSES),
        "mobilenet_v2",
        "ImageClassifier_palettize6.mlpackage",
        "c0ffee",
        "raw 0-255",
    ]:
        assert text in card  # class names as the card escapes them (red\\_disc renders as red_disc)
    assert f"{100 * manifest['pytorch_val_top1']:.1f}%" in card
    swift = (out / "Classifier.swift").read_text()
    for text in ["import Vision", "VNCoreMLRequest", "VNClassificationObservation", "CGImage"]:
        assert text in swift
    assert "try ImageClassifier_fp16(configuration: configuration).model" in swift


def test_xcode_class_name() -> None:
    assert xcode_class_name("ImageClassifier_fp16.mlpackage") == "ImageClassifier_fp16"
    assert xcode_class_name("out/My Model-v2.mlpackage") == "My_Model_v2"
    assert xcode_class_name("3d.mlpackage") == "_3d"


def small_export(
    tmp_path: Path, cfg: OmegaConf, out_dir: Path | None = None, checkpoint: dict | None = None
) -> dict:
    """export_all with the tiny net on a few generated images (`checkpoint`: the identity it came from)."""
    samples = make_images(tmp_path / "images", per_class=2, seed=2)
    return export_all(
        tiny_net(),
        classes=CLASSES,
        data_config=DATA_CONFIG,
        out_dir=out_dir or tmp_path / "export",
        cfg=cfg,
        calibration_paths=[p for p, _ in samples],
        val_samples=samples,
        provenance=METADATA,
        checkpoint=checkpoint,
    )


def test_failed_coreml_conversion_keeps_other_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_convert(*args: object, **kwargs: object) -> None:
        raise RuntimeError("converter exploded on op 'foo'")

    monkeypatch.setattr(ct, "convert", broken_convert)
    with caplog.at_level(logging.ERROR):
        manifest = small_export(tmp_path, export_config(**{"onnx.int8": False}))
    out = tmp_path / "export"
    assert {a["name"] for a in manifest["artifacts"]} == {"model_torchscript.pt", "model.onnx"}
    assert (out / "model_torchscript.pt").is_file() and (out / "model.onnx").is_file()
    assert not list(out.glob("*.mlpackage"))
    assert manifest["errors"] == [
        {"artifact": "coreml_fp16 conversion", "error": "RuntimeError: converter exploded on op 'foo'"}
    ]
    assert {s["name"] for s in manifest["skipped"]} >= {
        "coreml_int8",
        "coreml_palettize6",
        "Classifier.swift",
    }
    assert "converter exploded" in caplog.text
    assert json.loads((out / "manifest.json").read_text())["errors"] == manifest["errors"]
    assert "converter exploded" in (out / "README.md").read_text()


def test_interrupted_first_export_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def dying_save(module: object, path: str, **kwargs: object) -> None:
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the process is stopped mid-write

    monkeypatch.setattr(torch.jit, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        small_export(tmp_path, export_config(formats=["torchscript", "onnx"]))
    assert not (tmp_path / "export").exists(), "no partial model, no temporary, no manifest"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != ".export.lock"]


def _contents(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_interrupted_reexport_keeps_the_previous_export_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = small_export(tmp_path, export_config(formats=["torchscript"]))
    out = tmp_path / "export"
    before = _contents(out)
    assert first["errors"] == [] and "model_torchscript.pt" in before and "manifest.json" in before

    def dying_export(model: object, example: object, path: Path, **kwargs: object) -> None:
        path.write_bytes(b"half an onnx file")
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_format, "export_onnx", dying_export)  # the onnx row of the format table
    with pytest.raises(KeyboardInterrupt):
        small_export(tmp_path, export_config(formats=["torchscript", "onnx"]))
    assert _contents(out) == before, "the previous export is untouched"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != ".export.lock"] == []


def test_export_never_replaces_a_folder_that_is_not_an_export(tmp_path: Path) -> None:
    notes = tmp_path / "my_notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("years of work")
    with pytest.raises(ValueError, match="not an earlier export"):
        small_export(tmp_path, export_config(formats=["torchscript"]), notes)
    assert [p.name for p in notes.iterdir()] == ["thesis.txt"]
    (tmp_path / "a_file").write_text("keep")
    with pytest.raises(ValueError, match="is not a folder"):
        small_export(tmp_path, export_config(formats=["torchscript"]), tmp_path / "a_file")
    assert (tmp_path / "a_file").read_text() == "keep"


def test_export_killed_mid_swap_is_restored(tmp_path: Path) -> None:
    """A kill between the swap's two renames leaves the old export aside: the next export puts it back."""
    small_export(tmp_path, export_config(formats=["torchscript"]))
    out = tmp_path / "export"
    before = _contents(out)
    out.rename(tmp_path / ".export.tmp-old-0badf00d")
    (tmp_path / ".export.tmp-1234abcd").mkdir()  # the new one, never swapped in
    with pytest.raises(ValueError, match="palettize5"):
        small_export(tmp_path, export_config(**{"coreml.quantize": ["palettize5"]}))
    assert _contents(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != ".export.lock"] == []


def test_atomic_output_replaces_directories_only_when_complete(tmp_path: Path) -> None:
    final = tmp_path / "Model.mlpackage"
    with atomic_output(final) as tmp:
        tmp.mkdir()
        (tmp / "weight.bin").write_bytes(b"v1")
    with pytest.raises(OSError), atomic_output(final) as tmp:
        tmp.mkdir()
        (tmp / "weight.bin").write_bytes(b"v2-partial")
        raise OSError("disk full")
    assert (final / "weight.bin").read_bytes() == b"v1"
    with atomic_output(final) as tmp:
        tmp.mkdir()
        (tmp / "weight.bin").write_bytes(b"v2")
    assert (final / "weight.bin").read_bytes() == b"v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Model.mlpackage"]


def test_reexport_without_a_known_checkpoint_keeps_nothing(tmp_path: Path) -> None:
    first = small_export(tmp_path, export_config(formats=["torchscript"]))
    assert first["errors"] == [] and (tmp_path / "export" / "model_torchscript.pt").exists()
    second = small_export(tmp_path, export_config(formats=["onnx"], **{"onnx.int8": False}))
    assert second["errors"] == []
    names = sorted(p.name for p in (tmp_path / "export").iterdir())
    try_page = [] if missing_reason() else ["try.html", "try_runtime"]
    expected = ["README.md", "golden", "golden.json", "labels.txt", "manifest.json", "model.onnx", *try_page]
    assert names == sorted(expected)


def test_reexport_keeps_other_formats_of_the_same_checkpoint_and_refuses_another(tmp_path: Path) -> None:
    """Defect: re-exporting with another format list silently deleted the first export's artifacts."""
    ckpt, other = (
        {"path": "/run/best.ckpt", "sha256": "a" * 64},
        {"path": "/run/last.ckpt", "sha256": "b" * 64},
    )
    onnx_only = export_config(formats=["onnx"], **{"onnx.int8": False})
    small_export(tmp_path, export_config(formats=["torchscript"]), checkpoint=ckpt)
    out = tmp_path / "export"
    torchscript = sha256(out / "model_torchscript.pt")
    second = small_export(tmp_path, onnx_only, checkpoint=ckpt)
    assert {a["name"]: a["checkpoint"] for a in second["artifacts"]} == {
        "model.onnx": "a" * 64,
        "model_torchscript.pt": "a" * 64,
    }
    assert sha256(out / "model_torchscript.pt") == torchscript and (out / "model.onnx").is_file()
    assert json.loads((out / "manifest.json").read_text())["checkpoint"] == ckpt
    assert "model_torchscript.pt" in (out / "README.md").read_text()
    before = _contents(out)
    with pytest.raises(ValueError, match="another checkpoint.*keep_other_checkpoints=true"):
        small_export(tmp_path, onnx_only, checkpoint=other)
    assert _contents(out) == before
    mixed = export_config(formats=["onnx"], **{"onnx.int8": False, "keep_other_checkpoints": True})
    third = small_export(tmp_path, mixed, checkpoint=other)
    assert {a["name"]: a["checkpoint"][0] for a in third["artifacts"]} == {
        "model.onnx": "b",
        "model_torchscript.pt": "a",
    }


def test_second_export_into_a_locked_folder_stops_with_one_line(tmp_path: Path, monkeypatch) -> None:
    """Defect: two exports into one folder deleted each other's staging folders; the loser crashed."""
    out = tmp_path / "export"
    monkeypatch.setattr(manifest_module, "LOCK_WAIT_S", 0.2)
    live = tmp_path / ".export.tmp-livelive"
    with manifest_module.export_lock(out):
        live.mkdir()  # the holder's staging folder
        with pytest.raises(manifest_module.ExportBusyError, match="another export is writing"):
            small_export(tmp_path, export_config(formats=["torchscript"]))
        assert live.is_dir(), "a live export's staging folder is never deleted by another"


def test_onnx_falls_back_to_the_torchscript_exporter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export = torch.onnx.export

    def dynamo_cannot_capture(*args: object, dynamo: bool, **kwargs: object) -> object:
        if dynamo:
            raise RuntimeError("torch.export cannot capture this model")
        return export(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_cannot_capture)
    manifest = small_export(tmp_path, export_config(formats=["onnx"], **{"onnx.int8": False}))
    onnx_entry = entry(manifest, "model.onnx")
    assert manifest["errors"] == [] and onnx_entry["exporter"] == "torchscript"
    assert "cannot capture" in onnx_entry["fallback_reason"]
    assert onnx_entry["top1_agreement"] == 1.0


def test_unreadable_val_image_is_listed_not_fatal(tmp_path: Path) -> None:
    bogus = tmp_path / "broken.jpg"
    bogus.write_bytes(b"\xff\xd8 truncated")
    samples = make_images(tmp_path / "images", per_class=1, seed=5)
    manifest = export_all(
        tiny_net(),
        classes=CLASSES,
        data_config=DATA_CONFIG,
        out_dir=tmp_path / "export",
        cfg=export_config(formats=["torchscript"]),
        calibration_paths=[],
        val_samples=[*samples, (str(bogus), 0)],
        provenance={},
    )
    assert manifest["errors"] == [] and manifest["val_images"] == len(samples)
    assert len(manifest["unreadable_images"]) == 1 and str(bogus) in manifest["unreadable_images"][0]


def test_invalid_config_fails_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "export"
    with pytest.raises(ValueError, match="palettize5"):
        small_export(tmp_path, export_config(**{"coreml.quantize": ["palettize5"]}), out)
    with pytest.raises(ValueError, match="iOS99"):
        small_export(tmp_path, export_config(**{"coreml.minimum_deployment_target": "iOS99"}), out)
    node = OmegaConf.to_container(export_config())  # a plain dict: the composed node refuses deletion
    del node["onnx"]["int8"]
    with pytest.raises(ValueError, match="onnx.int8"):
        small_export(tmp_path, node, out)
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="real photos not available (../shared)")
def test_real_photos(tmp_path: Path) -> None:
    """Real phone-camera JPEGs (odd sizes, EXIF) go through the same checks."""
    val = [
        (str(p), i)
        for i, name in enumerate(("ants", "bees"))
        for p in sorted((HYMENOPTERA / "val" / name).iterdir())[:8]
    ]
    train = [
        str(p) for name in ("ants", "bees") for p in sorted((HYMENOPTERA / "train" / name).iterdir())[:8]
    ]
    model = nn.Sequential(*list(tiny_net())[:-1], nn.Linear(16, 2)).eval()
    manifest = export_all(
        model,
        classes=["ants", "bees"],
        data_config=DATA_CONFIG,
        out_dir=tmp_path / "export",
        cfg=export_config(formats=["onnx"]),
        calibration_paths=train,
        val_samples=val,
        provenance={},
    )
    assert manifest["errors"] == [] and manifest["val_images"] == 16
    assert entry(manifest, "model.onnx")["top1_agreement"] >= 0.995


def test_export_of_a_nan_model_fails_its_gate(tmp_path: Path) -> None:
    """Defect: a NaN model exported as "passed, 100% agreement" (argmax of NaN agrees with itself)."""
    model = tiny_net()
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(float("nan"))
    samples = make_images(tmp_path / "images", per_class=2, seed=2)
    manifest = export_all(
        model,
        classes=CLASSES,
        data_config=DATA_CONFIG,
        out_dir=tmp_path / "export",
        cfg=export_config(formats=["onnx"], **{"onnx.int8": False}),
        calibration_paths=[p for p, _ in samples],
        val_samples=samples,
        provenance=METADATA,
    )
    assert [e["artifact"] for e in manifest["errors"]] == ["PyTorch reference"]
    assert "NaN or infinite" in manifest["errors"][0]["error"]
