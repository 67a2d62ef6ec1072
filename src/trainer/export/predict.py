"""trainer-predict: top-k classes for photos with an exported model of any format in export/formats.py.

Preprocessing (the run's data config: resize, crop, mean/std) and the class names come from the manifest.json
beside the artifact, so the command needs nothing but the export folder, and images are decoded and
transformed exactly as validation and the export's verification did. Problems with the inputs end in one
line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.data_config import DataConfig
from trainer.data.images import check_image
from trainer.export.formats import RuntimeUnavailable, by_suffix, suffix_formats
from trainer.export.manifest import MANIFEST_NAME
from trainer.export.verify import Predict, load_inputs, softmax

EXIT_USAGE = 2


class PredictError(Exception):
    """A problem with the user's inputs, reported as one line."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def read_manifest(artifact: Path) -> dict[str, Any]:
    """The manifest.json written beside `artifact` by the export."""
    path = artifact.parent / MANIFEST_NAME
    if not path.is_file():
        raise PredictError(f"no {MANIFEST_NAME} beside {artifact} (looked for {path})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        classes, prep = manifest["classes"], manifest["preprocess"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PredictError(f"cannot read {path}: {_first_line(exc)}") from exc
    if not isinstance(prep, dict) or "crop_pct" not in prep:
        raise PredictError(f"{path} predates data configs in the manifest: export the checkpoint again")
    entry = next((a for a in manifest.get("artifacts", []) if a.get("path") == artifact.name), {})
    if entry.get("kind") == "embedding":
        raise PredictError(f"{artifact} is a feature extractor: it outputs embeddings, not classes")
    if not classes:
        raise PredictError(f"{path} lists no classes")
    return manifest


def data_config(manifest: dict[str, Any]) -> DataConfig:
    """The run's eval preprocessing, as the export recorded it."""
    return DataConfig.from_dict(manifest["preprocess"])


def preprocess_images(images: Sequence[Path], manifest: dict[str, Any]) -> np.ndarray:
    """(N, 3, S, S) inputs for `images`, read as the export's verification read the val images."""
    batch, _, unreadable = load_inputs([str(image) for image in images], data_config(manifest))
    if unreadable:
        raise PredictError(f"cannot read image {unreadable[0]}")
    return batch


def load_predictor(artifact: Path, manifest: dict[str, Any]) -> tuple[Predict, bool]:
    """A predictor for `artifact` (any format of the table), and whether it returns probabilities rather
    than logits. Raises RuntimeUnavailable where this machine cannot run the format."""
    row = by_suffix(artifact)
    if row is None:
        expected = ", ".join(suffix_formats())
        raise PredictError(f"{artifact}: unsupported artifact type '{artifact.suffix}' (expected {expected})")
    missing = row.missing()
    if missing:
        raise RuntimeUnavailable(f"{row.name} artifacts need {missing}")
    try:
        return row.impl().load(artifact, manifest), row.probabilities
    except RuntimeUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure means the artifact is unusable
        raise PredictError(f"cannot load {artifact}: {_first_line(exc)}") from exc


def predict_images(
    artifact: Path, images: Sequence[Path], top_k: int
) -> list[tuple[Path, list[tuple[str, float]]]]:
    """Top-k (class, probability) for each image, best first."""
    if not artifact.exists():
        raise PredictError(f"artifact not found: {artifact}")
    manifest = read_manifest(artifact)
    for image in images:
        reason = check_image(image)
        if reason:
            raise PredictError(f"cannot read image {image}: {reason}")
    try:
        predict, gives_probabilities = load_predictor(artifact, manifest)
    except RuntimeUnavailable as exc:
        raise PredictError(f"{artifact}: {exc}") from exc
    batch = preprocess_images(images, manifest)
    try:
        scores = np.asarray(predict(batch), dtype=np.float32).reshape(len(images), -1)
    except Exception as exc:  # noqa: BLE001 - a model that loads but cannot run these inputs is a bad artifact
        raise PredictError(f"cannot run {artifact}: {_first_line(exc)}") from exc
    probabilities = scores if gives_probabilities else softmax(scores)
    classes = manifest["classes"]
    results = []
    for image, row in zip(images, probabilities, strict=True):
        order = np.argsort(-row)[:top_k]
        results.append((image, [(classes[i], float(row[i])) for i in order]))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (trainer-predict); returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="trainer-predict", description="Print the top-k classes of photos with an exported model."
    )
    parser.add_argument(
        "--artifact", required=True, type=Path, help=f"an exported model ({', '.join(suffix_formats())})"
    )
    parser.add_argument("images", nargs="+", type=Path, help="photos to classify")
    parser.add_argument(
        "--top-k", type=int, default=3, help="how many classes to print per image (default 3)"
    )
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    try:
        results = predict_images(args.artifact, args.images, args.top_k)
    except PredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for image, top in results:
        print(image)
        width = max(len(label) for label, _ in top)
        for label, probability in top:
            print(f"  {label:<{width}}  {probability:.3f}")
    return 0
