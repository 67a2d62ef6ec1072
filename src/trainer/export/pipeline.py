"""export_all: every artifact, verified on the val images and listed in manifest.json.

The formats come from the table in formats.py, in its order; each runs inside its own guard: a converter that
raises is logged and listed in the manifest's `errors`, and the remaining formats still export. A format
whose optional packages are absent is listed in `skipped` with the install command. Callers exit non-zero
when `errors` is not empty.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from trainer.data.data_config import DataConfig
from trainer.export.formats import FORMATS, Format
from trainer.export.handoff.golden import GOLDEN_DIR, write_golden
from trainer.export.handoff.golden_tests import write_kotlin_test, write_swift_tests
from trainer.export.handoff.kotlin import write_kotlin
from trainer.export.handoff.model_card import write_model_card
from trainer.export.handoff.names import CARD_NAME, swift_package, tflite_model, write_labels
from trainer.export.handoff.swift import write_swift
from trainer.export.handoff.try_page import PAGE_NAME, RUNTIME_FOLDER, write_try_page
from trainer.export.job import ExportJob
from trainer.export.keep import artifacts_to_keep, copy_kept
from trainer.export.manifest import MANIFEST_NAME, ArtifactEntry, staged_folder, write_manifest
from trainer.export.metadata import ArtifactMetadata
from trainer.export.settings import ExportSettings
from trainer.export.verify import latency_ms, load_inputs, run_batches, top1, torch_predictor

log = logging.getLogger(__name__)

BASE_PACKAGES = ["torch", "onnx", "onnxruntime", "coremltools"]  # versions listed in every manifest

T = TypeVar("T")


def _spread(items: Sequence[T], count: int | None) -> list[T]:
    """At most `count` items taken evenly across `items` (lists are often grouped by class)."""
    if count is None or count >= len(items):
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def calibration_draw(paths: Sequence[str], label_of: Mapping[str, int], count: int) -> list[str]:
    """`count` calibration images drawn across classes: places dealt round-robin over the classes (paths
    without a label form one group), each class's share spread evenly over its images, so every class
    calibrates the activation ranges, however unequal the class sizes."""
    if count >= len(paths):
        return list(paths)
    groups: dict[int, list[str]] = {}
    for path in paths:
        groups.setdefault(label_of.get(path, -1), []).append(path)
    quota = dict.fromkeys(groups, 0)
    while sum(quota.values()) < count:
        for label, members in groups.items():
            if quota[label] < len(members) and sum(quota.values()) < count:
                quota[label] += 1
    return [path for label, members in groups.items() for path in _spread(members, quota[label])]


def _training_draw(
    paths: Sequence[str], label_of: Mapping[str, int], calibration: Sequence[str], count: int, held_out: bool
) -> list[str]:
    """`count` training images drawn across classes; held_out: from those outside `calibration`."""
    if held_out:
        drawn = set(calibration)
        paths = [path for path in paths if path not in drawn]
    return calibration_draw(paths, label_of, count)


class _Flatten(nn.Module):
    """A feature extractor with (N, D) output, whatever pooling shape the backbone leaves."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x).flatten(1)


def export_all(model: nn.Module, *, out_dir: Path, **kwargs: Any) -> dict:
    """Export `model` into `out_dir` (see `_export_into` for the arguments); returns the manifest.

    The export is built in a hidden folder beside `out_dir` and replaces it only once complete, so a crash
    or an interrupt keeps the previous export whole; the previous export's artifacts of other formats are
    carried over (keep.py).
    """
    with staged_folder(Path(out_dir)) as work:
        manifest = _export_into(model, out_dir=work, previous=Path(out_dir), **kwargs)
    if manifest["errors"]:
        log.error(
            "export finished with %d error(s); see %s", len(manifest["errors"]), Path(out_dir) / MANIFEST_NAME
        )
    return manifest


def _export_into(
    model: nn.Module,
    *,
    classes: list[str],
    data_config: DataConfig,
    out_dir: Path,
    cfg: DictConfig | dict | ExportSettings,
    calibration_paths: list[str],
    val_samples: list[tuple[str, int]],
    provenance: dict,
    headless: nn.Module | None = None,
    head: nn.Module | None = None,
    train_samples: Sequence[tuple[str, int]] = (),
    checkpoint: dict[str, str] | None = None,
    previous: Path | None = None,
) -> dict:
    """Export `model` in every configured format to `out_dir`, verify each, and write manifest.json.

    `model` maps normalized (N, 3, S, S) float input to (N, len(classes)) logits; `data_config` is the run's
    eval preprocessing, which every input here and the app's preprocessing follow; `calibration_paths` are
    training images for int8 calibration; `provenance` (backbone, dataset, val metrics, config hash, ...) goes
    into the Core ML models, the manifest and the model card.
    `headless` (the model without its head), `head` and the labelled `train_samples` feed the feature
    extractor and UpdatableClassifier exports (`export.headless`, `export.updatable`). `checkpoint` (path and
    sha256, keep.py) is recorded in every entry; with it, `previous` export's other formats are kept.
    Returns the manifest. Failed formats are listed in its `errors` (never raised): exit non-zero on them.
    Raises ValueError for an invalid `cfg` before anything is written.
    """
    settings = cfg if isinstance(cfg, ExportSettings) else ExportSettings.from_config(cfg)
    settings.on_device.check_data(settings.updatable, classes, [label for _, label in train_samples])
    carried = (
        artifacts_to_keep(
            previous, settings.formats, list(classes), checkpoint, settings.keep_other_checkpoints
        )
        if previous
        else []
    )
    model = copy.deepcopy(model).cpu().eval()
    image_size, mean, std = data_config.size, data_config.mean, data_config.std

    samples = _spread(val_samples, settings.verify.max_images)
    inputs, kept, unreadable = load_inputs([path for path, _ in samples], data_config)
    predict = torch_predictor(model)
    label_of = dict(train_samples)
    calibration = calibration_draw(calibration_paths, label_of, settings.calibration.images)
    job = ExportJob(
        model=model,
        classes=list(classes),
        data_config=data_config,
        out_dir=out_dir,
        settings=settings,
        inputs=inputs,
        labels=np.asarray([samples[i][1] for i in kept], dtype=np.int64),
        reference=run_batches(predict, inputs),
        example=torch.from_numpy(inputs[:1]) if len(inputs) else torch.randn(1, 3, image_size, image_size),
        model_metadata=ArtifactMetadata.build(classes, data_config, provenance, settings).to_dict(),
        read_calibration=lambda: load_inputs(calibration, data_config)[0],
        threads=torch.get_num_threads(),
        read_training=lambda count, held_out: load_inputs(
            _training_draw(calibration_paths, label_of, calibration, count, held_out), data_config
        )[0],
        val_paths=[samples[i][0] for i in kept],
    )
    if not len(inputs):
        job.warnings.append("no readable val images: the artifacts were exported but not verified")
    elif not np.isfinite(job.reference).all():  # argmax of NaN agrees with itself: every gate would pass
        job.fail(
            "PyTorch reference",
            [
                "the model's own outputs on the val images are NaN or infinite, so no artifact can be "
                "checked: its weights are broken (did training diverge? lower optim.lr)"
            ],
        )

    chosen = export_formats(job)
    if settings.headless:
        _headless(job, headless, [row for row in chosen if row.headless and not row.missing()])
    updatable = False
    if settings.updatable:
        from trainer.export.updatable.export import export_updatable

        updatable = export_updatable(job, headless=headless, head=head, train_samples=train_samples)
    for entry in job.artifacts:
        entry["checkpoint"] = checkpoint["sha256"] if checkpoint else None
    if carried and previous:
        copy_kept(previous, out_dir, carried)
        job.artifacts.extend(carried)

    manifest: dict[str, Any] = {
        "classes": list(classes),
        "image_size": image_size,
        "mean": list(mean),
        "std": list(std),
        "preprocess": data_config.to_dict(),
        "description": settings.description,
        "author": settings.author,
        "license": settings.license,
        "version": settings.version,
        "metadata": provenance,
        "checkpoint": checkpoint,
        "val_images": len(inputs),
        "unreadable_images": unreadable,
        "pytorch_val_top1": top1(job.reference, job.labels),
        "pytorch_latency_ms": (
            latency_ms(predict, inputs[:1], settings.latency.runs, settings.latency.warmup)
            if len(inputs)
            else None
        ),
        "threads": job.threads,
        "artifacts": [ArtifactEntry.from_dict(entry).to_dict() for entry in job.artifacts],
        "skipped": job.skipped,
        "warnings": job.warnings,
        "errors": job.errors,
        "handoff": [],
        "versions": {p: _version(p) for p in BASE_PACKAGES + [p for row in chosen for p in row.requires]},
    }
    with job.guard("golden photos"):
        golden = write_golden(out_dir, manifest, [samples[i][0] for i in kept], job.reference)
        manifest["handoff"] += [golden, GOLDEN_DIR] if golden else []
    with job.guard("handoff files"):
        manifest["handoff"].append(write_labels(out_dir, classes))
        package = swift_package(job.artifacts)
        if package:
            target = settings.coreml.minimum_deployment_target
            manifest["handoff"].append(write_swift(out_dir, package, data_config, target))
            if golden:
                manifest["handoff"].append(write_swift_tests(out_dir, package, target))
        else:
            job.skip("Classifier.swift", "no Core ML classifier was exported")
        tflite = tflite_model(job.artifacts)
        if tflite:
            manifest["handoff"].append(write_kotlin(out_dir, tflite, data_config))
            if golden:
                manifest["handoff"].append(write_kotlin_test(out_dir))
        elif "litert" in settings.formats:
            job.skip("Classifier.kt", "no LiteRT classifier was exported")
        if updatable:
            from trainer.export.handoff.updatable_swift import write_updatable_swift

            swift = write_updatable_swift(out_dir, settings.updatable, data_config, classes)
            manifest["handoff"].append(swift)
        page, reason = write_try_page(out_dir, manifest)
        if page:
            manifest["handoff"] += [page, RUNTIME_FOLDER]
        elif "onnx" in settings.formats:
            job.skip(PAGE_NAME, reason or "")
        manifest["handoff"].append(CARD_NAME)
        write_model_card(out_dir, manifest)
    write_manifest(out_dir, manifest)
    return manifest


def export_formats(job: ExportJob) -> list[Format]:
    """Run the export of each format in `job.settings.formats`, in table order; a format whose optional
    packages are absent is skipped with the install command. Returns the rows chosen (the benchmark runs its
    exports through here too)."""
    chosen = [row for name, row in FORMATS.items() if name in job.settings.formats]
    for row in chosen:
        reason = row.missing()
        if reason:
            job.skip(row.name, reason)
        else:
            row.impl().export(job)
    return chosen


def _version(package: str) -> str | None:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return None


def _headless(job: ExportJob, headless: nn.Module | None, rows: list[Format]) -> None:
    """The feature extractor in each chosen format that offers one, checked against PyTorch's embeddings."""
    if headless is None:
        job.fail("headless", ["export.headless is true but no feature-extractor module was passed"])
        return
    extractor = _Flatten(copy.deepcopy(headless).cpu()).eval()
    reference = run_batches(torch_predictor(extractor), job.inputs)
    for row in rows:
        row.impl().export_headless(job, extractor, reference)
