"""One preprocessing from training to the app, and the hand-off metadata, on one photo through every path.

The photo is a real JPEG from ../shared when present (else a generated one); the data config is resolved the
way a run resolves it. Validation during training, the export's verification inputs, its int8 calibration
inputs and trainer-predict must produce the same tensor; the Core ML image input's scale/bias plus the
in-graph correction, applied in numpy to the pixels Vision hands the model, must give that tensor too.
"""

from __future__ import annotations

import getpass
import json
import re
from importlib import metadata
from pathlib import Path

import coremltools as ct
import numpy as np
import onnx
import pytest
from conftest import SHARED
from PIL import Image
from test_export import CLASSES, export_config, tiny_net
from timm.data import resolve_data_config

from trainer.cli import compose_config
from trainer.data.data_config import CROP_MODES, DataConfig, data_config_from_record
from trainer.data.datamodule import ImageDataModule
from trainer.data.index import DatasetIndex
from trainer.data.transforms import eval_transform
from trainer.export import pipeline
from trainer.export.converters import onnx as onnx_format
from trainer.export.converters.coreml import convert as coreml_convert
from trainer.export.converters.coreml import spec as coreml_spec
from trainer.export.handoff.confidence import accuracy_text, wilson_interval
from trainer.export.handoff.escape import markdown_text
from trainer.export.handoff.swift import swift_classifier
from trainer.export.pipeline import export_all
from trainer.export.predict import preprocess_images, read_manifest
from trainer.export.settings import LICENSE_UNSET, ExportSettings, default_author
from trainer.models import build_classifier

SIZE = 64
HYMENOPTERA_VAL = SHARED / "data" / "hymenoptera" / "val"

pytestmark = pytest.mark.usefixtures("one_thread")


def photo(tmp_path: Path) -> Path:
    """The largest real val JPEG (so reduced-scale decoding applies), else a generated 640x480 JPEG."""
    if HYMENOPTERA_VAL.is_dir():
        return max(HYMENOPTERA_VAL.glob("*/*.jpg"), key=lambda p: min(Image.open(p).size))
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:480, 0:640]
    smooth = np.stack([xs * 0.35, ys * 0.5, (xs + ys) * 0.2], axis=-1)
    pixels = np.clip(smooth + rng.normal(0, 30, (480, 640, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(path, quality=90)
    return path


def coreml_input(pixels: np.ndarray, norm: coreml_convert.ImageNormalization) -> np.ndarray:
    """What the model's first ops compute from raw (3, S, S) pixels: ImageType scale/bias, then the
    per-channel correction (gain, offset) the export traces into the graph."""
    x = norm.image_type_output(pixels[None].astype(np.float64))[0].astype(np.float64)
    if norm.gain is not None:
        x = x * np.reshape(norm.gain, (3, 1, 1)) + np.reshape(norm.offset, (3, 1, 1))
    return x


def vision_pixels(image: Image.Image, fraction: float, size: int, crop_mode: str = "center") -> np.ndarray:
    """(3, S, S) pixels Vision hands the model for Classifier.swift's region of interest with `.scaleFill`,
    modelled with PIL's bilinear filter. The region mirrors `evaluatedRegion`: a centred square `fraction`
    of the shorter side (center; 1.0 is Vision's `.centerCrop`), or `fraction` of each side (squash)."""
    width, height = image.size
    if crop_mode == "squash":
        half_w, half_h = width * fraction / 2, height * fraction / 2
    else:
        half_w = half_h = min(width, height) * fraction / 2
    box = (width / 2 - half_w, height / 2 - half_h, width / 2 + half_w, height / 2 + half_h)
    resized = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(resized, np.float64).transpose(2, 0, 1)


def swift_crop_fraction(swift: str) -> float:
    return float(re.search(r"static let cropFraction: Double = ([0-9.]+)", swift).group(1))


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One photo through the run's validation loader and a full ONNX + Core ML export."""
    root = tmp_path_factory.mktemp("preprocess")
    image = photo(root)
    cfg = compose_config(["model=demo", f"dataset.image_size={SIZE}"])
    data_config = DataConfig.resolve(build_classifier(cfg.model, len(CLASSES)).data_config, SIZE)
    index = DatasetIndex(classes=CLASSES, train=[(str(image), 0)], val=[(str(image), 0)])
    val_batch, _ = next(iter(ImageDataModule.from_config(index, data_config, cfg).val_dataloader()))

    recorded: dict[str, list[np.ndarray]] = {"reference": [], "calibration": []}
    run_batches, quantize_int8 = pipeline.run_batches, onnx_format.quantize_int8

    def record_reference(predict, inputs, *args, **kwargs):
        recorded["reference"].append(inputs)
        return run_batches(predict, inputs, *args, **kwargs)

    def record_calibration(fp32_path, path, calibration, **kwargs):
        recorded["calibration"].append(calibration)
        return quantize_int8(fp32_path, path, calibration, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "run_batches", record_reference)
        patch.setattr(onnx_format, "quantize_int8", record_calibration)
        cfg_export = export_config(
            formats=["onnx", "coreml"],
            **{"coreml.quantize": ["fp16"], "author": None, "license": None, "version": None},
        )
        manifest = export_all(
            tiny_net(),
            classes=CLASSES,
            data_config=data_config,
            out_dir=root / "export",
            cfg=cfg_export,
            calibration_paths=[str(image)],
            val_samples=[(str(image), 0)],
            provenance={"val_top1": 0.8, "val_images": 10},
        )
    assert manifest["errors"] == []
    return {
        "image": image,
        "data_config": data_config,
        "val": val_batch[0].numpy(),
        "recorded": recorded,
        "out": root / "export",
        "manifest": manifest,
    }


def test_every_measured_path_gives_the_validation_tensor(paths: dict) -> None:
    val, data_config = paths["val"], paths["data_config"]
    assert val.shape == (3, SIZE, SIZE)
    (reference,) = paths["recorded"]["reference"]  # what the artifacts are verified on
    (calibration,) = paths["recorded"]["calibration"]  # what ONNX int8 is calibrated on
    manifest = read_manifest(paths["out"] / "model.onnx")
    replay = preprocess_images([paths["image"]], manifest)  # trainer-predict, from manifest.json alone
    assert DataConfig.from_dict(manifest["preprocess"]) == data_config
    for tensor in (reference, calibration, replay):
        np.testing.assert_array_equal(tensor[0], val)


def test_coreml_input_and_vision_region_reproduce_the_tensor(paths: dict) -> None:
    val, data_config, out = paths["val"], paths["data_config"], paths["out"]
    norm = coreml_convert.ImageNormalization.from_stats(data_config.mean, data_config.std)
    package = out / "ImageClassifier_fp16.mlpackage"
    assert not coreml_spec.check_spec(
        package, image_size=SIZE, norm=norm, classes=CLASSES, model_metadata_keys=[]
    )
    # the pixels the val tensor came from, through the package's scale/bias and the correction
    pixels = np.rint(
        (val * np.reshape(data_config.std, (3, 1, 1)) + np.reshape(data_config.mean, (3, 1, 1))) * 255
    )
    np.testing.assert_allclose(coreml_input(pixels, norm), val, atol=1e-5)

    swift = (out / "Classifier.swift").read_text()
    assert ".centerCrop" not in swift and "imageCropAndScaleOption = .scaleFill" in swift
    assert "VNImageRequestHandler(cgImage: image, orientation: orientation" in swift
    assert "kCGImagePropertyOrientation" in swift and "imageOrientation" in swift
    fraction = swift_crop_fraction(swift)
    assert fraction == pytest.approx(data_config.size / data_config.resize_size)
    image = Image.open(paths["image"]).convert("RGB")
    app = np.abs(coreml_input(vision_pixels(image, fraction, SIZE), norm) - val).mean()
    center_crop = np.abs(coreml_input(vision_pixels(image, 1.0, SIZE), norm) - val).mean()
    # PIL's and Vision's filters differ by a fraction of a pixel; the whole shorter side by far more
    assert app < center_crop / 1.5, (app, center_crop)


@pytest.mark.parametrize("crop_mode", CROP_MODES)
@pytest.mark.parametrize("shape", [(256, 192), (192, 256)])
def test_vision_region_keeps_what_the_eval_transform_keeps(crop_mode: str, shape: tuple[int, int]) -> None:
    """On an image whose red and green values are its x and y, the pixels name their source position."""
    data_config = DataConfig(
        size=SIZE,
        interpolation="bilinear",
        crop_pct=0.875,
        crop_mode=crop_mode,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )
    swift = swift_classifier("ImageClassifier_fp16.mlpackage", data_config)
    width, height = shape
    ys, xs = np.mgrid[0:height, 0:width]
    ramps = Image.fromarray(np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8))
    evaluated = (eval_transform(data_config)(ramps).numpy() * 0.5 + 0.5) * 255
    for fraction, limit in ((swift_crop_fraction(swift), 2.5), (1.0, None)):
        offset = np.abs(vision_pixels(ramps, fraction, SIZE, crop_mode) - evaluated)[:2, 1:-1, 1:-1]
        if limit is not None:  # within a pixel or two of the source, away from the filters' edges
            assert offset.max() <= limit, offset.max()
        else:  # Vision's .centerCrop: ~12 source pixels off at the borders
            assert offset.max() > 10


def test_card_documents_the_preprocessing_and_metadata(paths: dict) -> None:
    manifest, data_config = paths["manifest"], paths["data_config"]
    card = (paths["out"] / "README.md").read_text()
    assert data_config.describe() in card and "regionOfInterest" in card and "`.centerCrop`" in card
    assert f"{data_config.crop_fraction:.4f}" in card
    assert f"- Author: {markdown_text(default_author())}" in card
    assert f"- License: {markdown_text(LICENSE_UNSET)}" in card
    assert f"- Version: {metadata.version('trainer')}" in card
    assert accuracy_text(manifest["pytorch_val_top1"], 1) in card  # the verification's own figure, n = 1
    assert "- val_top1: 80.0% (95% CI 49.0–94.3%, 10 images)" in card  # the run's figure, its n


def test_every_artifact_carries_the_handoff_metadata(paths: dict) -> None:
    out, data_config = paths["out"], paths["data_config"]
    author, version = default_author(), metadata.version("trainer")
    assert author
    spec = ct.models.utils.load_spec(str(out / "ImageClassifier_fp16.mlpackage"))
    meta = spec.description.metadata
    assert (meta.author, meta.license, meta.versionString) == (author, LICENSE_UNSET, version)
    assert json.loads(meta.userDefined["preprocess"]) == data_config.to_dict()
    for name in ("model.onnx", "model_int8.onnx"):
        props = {p.key: p.value for p in onnx.load(str(out / name)).metadata_props}
        assert json.loads(props["labels"]) == CLASSES
        assert json.loads(props["mean"]) == list(data_config.mean)
        assert json.loads(props["std"]) == list(data_config.std)
        assert props["image_size"] == str(SIZE)
        assert DataConfig.from_dict(json.loads(props["preprocess"])) == data_config
        assert (props["author"], props["license"], props["version"]) == (author, LICENSE_UNSET, version)


def test_check_spec_reports_empty_author_and_license(paths: dict, tmp_path: Path) -> None:
    model = ct.models.MLModel(str(paths["out"] / "ImageClassifier_fp16.mlpackage"))
    model.author, model.license = "", ""
    broken = tmp_path / "broken.mlpackage"
    model.save(str(broken))
    norm = coreml_convert.ImageNormalization.from_stats(paths["data_config"].mean, paths["data_config"].std)
    problems = coreml_spec.check_spec(
        broken, image_size=SIZE, norm=norm, classes=CLASSES, model_metadata_keys=[]
    )
    assert problems == ["metadata fields ['author', 'license'] are empty"]


def test_checkpoint_data_config_new_and_old() -> None:
    new = DataConfig(
        size=96, interpolation="bicubic", crop_pct=0.95, crop_mode="squash", mean=(0.5,) * 3, std=(0.25,) * 3
    )
    assert data_config_from_record({"data_config": new.to_dict(), "image_size": 96}) == new
    old = {  # what checkpoints held before the size and crop mode were resolved with the rest
        "data_config": {
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "crop_pct": 0.875,
            "interpolation": "bilinear",
        },
        "image_size": 64,
    }
    loaded = data_config_from_record(old)
    assert (loaded.size, loaded.crop_mode, loaded.resize_size) == (64, "center", 73)
    with pytest.raises(ValueError, match="crop_mode 'border'"):
        DataConfig.resolve({**old["data_config"], "crop_mode": "border"}, 64)


def test_timm_backbone_resolves_as_timm_does() -> None:
    cfg = compose_config(["model=mobilenet_v1", "model.pretrained=false", "model.alpha=0.25"])
    classifier = build_classifier(cfg.model, 2)
    resolved = DataConfig.resolve(classifier.data_config, 160)
    timm_config = resolve_data_config({"input_size": (3, 160, 160)}, model=classifier.model)
    assert resolved.to_dict() == {
        **{k: timm_config[k] for k in ("interpolation", "crop_pct", "crop_mode")},
        "size": 160,
        "mean": list(timm_config["mean"]),
        "std": list(timm_config["std"]),
        "resize": int(160 / timm_config["crop_pct"]),
        "crop_fraction": 160 / int(160 / timm_config["crop_pct"]),
    }


def test_author_license_version_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no repository config
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text("[user]\n\tname = Ada Lovelace\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    settings = ExportSettings.from_config(export_config(author=None, license=" ", version=None))
    assert (settings.author, settings.license) == ("Ada Lovelace", LICENSE_UNSET)
    assert settings.version == metadata.version("trainer")
    gitconfig.write_text("")
    monkeypatch.setenv("LOGNAME", "ada")
    assert default_author() == getpass.getuser() == "ada"
    chosen = ExportSettings.from_config(export_config(author="Team", license="MIT", version="2.0"))
    assert (chosen.author, chosen.license, chosen.version) == ("Team", "MIT", "2.0")


def test_accuracy_text_gives_the_wilson_interval_and_n() -> None:
    low, high = wilson_interval(8, 10)  # the textbook example: 0.490 to 0.943
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert accuracy_text(0.995, 200) == "99.5% (95% CI 97.2–99.9%, 200 images)"
    assert accuracy_text(None, 200) == accuracy_text(0.5, 0) == "n/a"
