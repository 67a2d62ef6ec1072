"""Golden photos: a few val photos copied into the export with the probabilities each shipped artifact gave on
them here, so that the generated ClassifierTests.swift and ClassifierTest.kt prove on the phone that the app
decodes, orients, crops and runs the model as the export measured it.

The photos are chosen to cover what breaks apps: a landscape, a portrait, an EXIF-rotated photo (made from a
val photo by storing its pixels sideways with orientation 6 when the val set has none), the least square one,
and the val photo whose two best classes are closest (a near-tie: its top-1 is asserted only when the margin
exceeds twice the tolerance, its probabilities always).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trainer.export.converters.coreml.gates import RUNTIME as REFERENCE_RUNTIME
from trainer.export.converters.coreml.gates import reference_predictor
from trainer.export.formats import RuntimeUnavailable
from trainer.export.predict import load_predictor, preprocess_images
from trainer.export.verify import Predict, softmax
from trainer.utils.files import write_text

GOLDEN_DIR = "golden"
GOLDEN_JSON = "golden.json"
# The phones resample with Vision's and Android's filters, not PIL's. Classifier.kt's resize simulated in
# numpy (tests/test_handoff_code.android_pixels) on a MobileNetV2 fine-tuned 1 epoch on hymenoptera at 128 px
# moved a golden photo's probability by at most 0.020 (model.tflite, fp16) and 0.013 (int8): 0.05 leaves room.
TOLERANCE = 0.05
EXIF_ORIENTATION = 0x0112
SIDEWAYS = (5, 6, 7, 8)  # EXIF orientations whose stored image is the upright one turned by 90 degrees


def _facts(path: str) -> tuple[int, int, int]:
    """(upright width, upright height, EXIF orientation) from the header."""
    with Image.open(path) as image:
        width, height = image.size
        orientation = int(image.getexif().get(EXIF_ORIENTATION, 1))
    return (height, width, orientation) if orientation in SIDEWAYS else (width, height, orientation)


def choose(paths: Sequence[str], probabilities: np.ndarray) -> list[tuple[str, str]]:
    """(path, case) for each case a val photo covers, each photo used once; the EXIF case may be missing."""
    facts = [_facts(p) for p in paths]
    top2 = np.sort(probabilities, axis=1)[:, -2:] if probabilities.shape[1] > 1 else probabilities
    margins = top2[:, -1] - (top2[:, 0] if top2.shape[1] > 1 else 0)
    aspect = [max(w, h) / min(w, h) for w, h, _ in facts]
    rank = {
        "landscape": [i for i, (w, h, _) in enumerate(facts) if w > h],
        "portrait": [i for i, (w, h, _) in enumerate(facts) if h > w],
        "exif_rotated": [i for i, (_, _, o) in enumerate(facts) if o != 1],
        "non_square": sorted(range(len(paths)), key=lambda i: -aspect[i]),
        "near_tie": sorted(range(len(paths)), key=lambda i: margins[i]),
    }
    chosen: list[tuple[str, str]] = []
    for case, candidates in rank.items():
        index = next((i for i in candidates if paths[i] not in {p for p, _ in chosen}), None)
        if index is not None:
            chosen.append((paths[index], case))
    return chosen


def _sideways_copy(source: str, target: Path) -> None:
    """`source` stored turned 90 degrees anticlockwise with EXIF orientation 6: upright, it is unchanged."""
    with Image.open(source) as image:
        upright = image.convert("RGB")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(target, "JPEG", quality=95, exif=exif)


def copy_photos(out_dir: Path, chosen: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Copy the chosen photos into golden/ under neutral names; add a sideways copy if no photo is rotated."""
    folder = out_dir / GOLDEN_DIR
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    photos = []
    for number, (path, case) in enumerate(chosen):
        name = f"{number}_{case}{Path(path).suffix.lower()}"
        shutil.copyfile(path, folder / name)
        photos.append({"file": f"{GOLDEN_DIR}/{name}", "case": case})
    if chosen and all(p["case"] != "exif_rotated" for p in photos):
        name = f"{len(photos)}_exif_rotated.jpg"
        _sideways_copy(chosen[0][0], folder / name)
        photos.append({"file": f"{GOLDEN_DIR}/{name}", "case": "exif_rotated"})
    for photo in photos:
        width, height, orientation = _facts(str(out_dir / photo["file"]))
        photo.update(upright_size=[width, height], exif_orientation=orientation)
    return photos


def golden_predictor(path: Path, manifest: dict[str, Any]) -> tuple[Predict, bool, str]:
    """(predict, gives probabilities, runtime) for a classifier artifact: its own runtime, or for Core ML
    where it cannot run (Linux) the reference executor its gates use. Raises RuntimeUnavailable otherwise."""
    try:
        predict, gives_probabilities = load_predictor(path, manifest)
        return predict, gives_probabilities, "its own runtime"
    except RuntimeUnavailable:
        if path.suffix != ".mlpackage":
            raise
    prep = manifest["preprocess"]
    predict = reference_predictor(path, classes=manifest["classes"], mean=prep["mean"], std=prep["std"])
    return predict, True, REFERENCE_RUNTIME


def expected_outputs(out_dir: Path, manifest: dict[str, Any], files: Sequence[str]) -> dict[str, Any]:
    """Per classifier artifact: each golden photo's top-1, margin over the second and probability per class,
    computed here (and with which runtime), or why it could not run."""
    images = [out_dir / f for f in files]
    batch = preprocess_images(images, manifest)
    classes, results = manifest["classes"], {}
    for artifact in manifest["artifacts"]:
        if artifact["kind"] != "classifier":
            continue
        try:
            predict, gives_probabilities, runtime = golden_predictor(out_dir / artifact["path"], manifest)
        except RuntimeUnavailable as exc:
            results[artifact["path"]] = {"not_run": str(exc)}
            continue
        scores = np.asarray(predict(batch), dtype=np.float64).reshape(len(images), -1)
        probabilities = scores if gives_probabilities else softmax(scores)
        rows: dict[str, Any] = {"runtime": runtime}
        for file, row in zip(files, probabilities, strict=True):
            order = np.argsort(-row)
            margin = float(row[order[0]] - row[order[1]]) if len(order) > 1 else 1.0
            rows[file] = {
                "top1": classes[order[0]],
                "margin": round(margin, 6),
                "probabilities": {c: round(float(p), 6) for c, p in zip(classes, row, strict=True)},
            }
        results[artifact["path"]] = rows
    return results


def write_golden(
    out_dir: Path, manifest: dict[str, Any], val_paths: Sequence[str], reference: np.ndarray
) -> str | None:
    """golden/ and golden.json (None when there is no readable val photo); `reference` is PyTorch's logits
    on `val_paths`; None too when no classifier was exported."""
    if not len(val_paths) or not any(a["kind"] == "classifier" for a in manifest["artifacts"]):
        return None
    photos = copy_photos(out_dir, choose(val_paths, softmax(reference)))
    expected = expected_outputs(out_dir, manifest, [p["file"] for p in photos])
    ran = {a: rows for a, rows in expected.items() if "not_run" not in rows}
    golden = {
        "tolerance": TOLERANCE,
        "rule": "top-1 must match when the expected margin over the second class exceeds 2 x tolerance; "
        "every class probability must be within the tolerance",
        "photos": [{**p, "expected": {a: rows[p["file"]] for a, rows in ran.items()}} for p in photos],
        "measured_by": {a: rows["runtime"] for a, rows in ran.items()},
        "not_run": {a: rows["not_run"] for a, rows in expected.items() if "not_run" in rows},
    }
    write_text(out_dir / GOLDEN_JSON, json.dumps(golden, indent=2) + "\n")
    return GOLDEN_JSON
