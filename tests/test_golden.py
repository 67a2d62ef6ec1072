"""Golden photos in the export: the cases that break apps are covered, and what golden.json says each artifact
gives on them is what the artifact gives when trainer-predict runs it again (its own runtime, here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_export import CLASSES, DATA_CONFIG, METADATA, export_config, make_images, tiny_net

from trainer.export.converters.coreml.gates import RUNTIME as REFERENCE_RUNTIME
from trainer.export.converters.coreml.gates import reference_predictor
from trainer.export.formats import FORMATS
from trainer.export.handoff.golden import EXIF_ORIENTATION, GOLDEN_JSON, TOLERANCE, choose
from trainer.export.pipeline import export_all
from trainer.export.predict import predict_images, preprocess_images

CASES = {"landscape", "portrait", "exif_rotated", "non_square", "near_tie"}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny net exported to ONNX, Core ML and (with the [mobile] extra) LiteRT; the val set has
    landscape photos (the generated 80x72 ones) and one portrait."""
    root = tmp_path_factory.mktemp("golden")
    samples = make_images(root / "val", per_class=3, seed=4)
    portrait = root / "val" / CLASSES[0] / "portrait.jpg"
    Image.open(samples[0][0]).transpose(Image.Transpose.ROTATE_90).save(portrait)
    samples.append((str(portrait), 0))
    formats = ["onnx", "coreml", *(["litert"] if not FORMATS["litert"].missing() else [])]
    manifest = export_all(
        tiny_net(),
        classes=CLASSES,
        data_config=DATA_CONFIG,
        out_dir=root / "export",
        cfg=export_config(formats=formats, **{"onnx.int8": False}),
        calibration_paths=[p for p, _ in samples],
        val_samples=samples,
        provenance=METADATA,
    )
    return {"manifest": manifest, "out": root / "export"}


def test_every_case_is_covered(exported: dict) -> None:
    out = exported["out"]
    golden = json.loads((out / GOLDEN_JSON).read_text())
    assert golden["tolerance"] == TOLERANCE
    photos = {p["case"]: p for p in golden["photos"]}
    assert set(photos) == CASES and all((out / p["file"]).is_file() for p in photos.values())
    rotated = photos["exif_rotated"]
    with Image.open(out / rotated["file"]) as image:
        assert image.getexif()[EXIF_ORIENTATION] == 6 and list(image.size) == rotated["upright_size"][::-1]
    width, height = photos["portrait"]["upright_size"]
    assert height > width


def test_expected_outputs_are_what_each_artifact_gives(exported: dict) -> None:
    """Recompute every artifact's probabilities on the golden photos with trainer-predict (Core ML on Linux:
    the reference executor, as golden.json records) and compare."""
    out, manifest = exported["out"], exported["manifest"]
    golden = json.loads((out / GOLDEN_JSON).read_text())
    classifiers = {a["path"] for a in manifest["artifacts"] if a["kind"] == "classifier"}
    assert set(golden["photos"][0]["expected"]) | set(golden["not_run"]) == classifiers
    assert any(name.endswith(".mlpackage") for name in golden["photos"][0]["expected"]), golden["not_run"]
    images = [out / p["file"] for p in golden["photos"]]
    batch = preprocess_images(images, manifest)
    for artifact, runtime in golden["measured_by"].items():
        if runtime == REFERENCE_RUNTIME:
            prep = manifest["preprocess"]
            predict = reference_predictor(out / artifact, classes=CLASSES, mean=prep["mean"], std=prep["std"])
            rows = predict(batch)
        else:
            results = predict_images(out / artifact, images, top_k=len(CLASSES))
            rows = [[dict(top)[c] for c in CLASSES] for _, top in results]
        for photo, row in zip(golden["photos"], rows, strict=True):
            expected = photo["expected"][artifact]
            assert CLASSES[int(np.argmax(row))] == expected["top1"], (artifact, photo["file"])
            wanted = [expected["probabilities"][c] for c in CLASSES]
            np.testing.assert_allclose(row, wanted, atol=1e-5, err_msg=f"{artifact} {photo['file']}")


def test_generated_tests_read_the_golden_file(exported: dict) -> None:
    out, manifest = exported["out"], exported["manifest"]
    assert {"golden.json", "golden", "ClassifierTests.swift"} <= set(manifest["handoff"])
    swift = (out / "ClassifierTests.swift").read_text()
    assert 'static let artifact = "ImageClassifier_fp16.mlpackage"' in swift
    assert 'bundle.url(forResource: "golden", withExtension: "json")' in swift
    if "litert" in {a["format"] for a in manifest["artifacts"]}:
        kotlin = (out / "ClassifierTest.kt").read_text()
        assert 'testAssets.open("golden.json")' in kotlin and "@RunWith(AndroidJUnit4::class)" in kotlin
    for label in CLASSES:
        assert label not in swift, "class names come from golden.json at run time"


def test_choose_covers_each_case_once(tmp_path: Path) -> None:
    """Landscape, portrait, EXIF-rotated, the least square and the nearest tie, each a different photo."""
    sizes = {"wide": (90, 60), "tall": (60, 90), "panorama": (200, 50), "square": (9, 9), "rotated": (80, 60)}
    paths = []
    for name, size in sizes.items():
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6 if name == "rotated" else 1
        Image.new("RGB", size).save(tmp_path / f"{name}.jpg", exif=exif)
        paths.append(str(tmp_path / f"{name}.jpg"))
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.51, 0.49], [0.6, 0.4]])
    chosen = {case: Path(path).stem for path, case in choose(paths, probabilities)}
    assert chosen == {
        "landscape": "wide",
        "portrait": "tall",
        "exif_rotated": "rotated",
        "non_square": "panorama",
        "near_tie": "square",
    }
