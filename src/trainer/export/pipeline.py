"""export_all: every artifact, verified on the val images and listed in manifest.json.

Each format runs inside its own guard: a converter that raises is logged and listed in the manifest's
`errors`, and the remaining formats still export. Callers exit non-zero when `errors` is not empty.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from trainer.data.data_config import DataConfig
from trainer.export import coreml_verify
from trainer.export.handoff import CARD_NAME, swift_package, write_labels, write_model_card, write_swift
from trainer.export.manifest import (
    MANIFEST_NAME,
    artifact_entry,
    record_errors,
    staged_folder,
    write_manifest,
)
from trainer.export.onnx import export_onnx, onnx_metadata, onnx_predictor, quantize_int8
from trainer.export.settings import ExportSettings
from trainer.export.torchscript import (
    export_lite,
    export_torchscript,
    lite_unavailable_reason,
    load_lite,
    load_torchscript,
)
from trainer.export.verify import (
    Predict,
    evaluate,
    fp32_problems,
    latency_ms,
    load_inputs,
    run_batches,
    softmax,
    top1,
    torch_predictor,
)

log = logging.getLogger(__name__)

TORCHSCRIPT_NAME = "model_torchscript.pt"
LITE_NAME = "model_mobile.ptl"
ONNX_NAME = "model.onnx"
ONNX_INT8_NAME = "model_int8.onnx"
HEADLESS_ONNX_NAME = "feature_extractor.onnx"
COREML_STEM = "ImageClassifier"
HEADLESS_COREML_STEM = "FeatureExtractor"
MAX_INT8_TOP1_DROP = 1.0  # points of val top-1 ONNX int8 may lose against fp32 before the manifest warns

T = TypeVar("T")


def _spread(items: Sequence[T], count: int | None) -> list[T]:
    """At most `count` items taken evenly across `items` (lists are often grouped by class)."""
    if count is None or count >= len(items):
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


class _Flatten(nn.Module):
    """A feature extractor with (N, D) output, whatever pooling shape the backbone leaves."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x).flatten(1)


@dataclass
class _Run:
    """State of one export: where it writes, what to compare against, and what the manifest collects."""

    out_dir: Path
    settings: ExportSettings
    inputs: np.ndarray
    labels: np.ndarray
    threads: int
    classes: list[str]
    data_config: DataConfig
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)

    def guard(self, what: str) -> AbstractContextManager[None]:
        """Record an exception from the block as an error of `what` instead of aborting the export; a line
        per stage on the console, so a long export shows where it is."""
        log.info("Exporting %s", what)
        return record_errors(self.errors, "artifact", what)

    def fail(self, what: str, problems: list[str]) -> None:
        for problem in problems:
            log.error("export: %s", problem)
            self.errors.append({"artifact": what, "error": problem})

    def skip(self, name: str, reason: str) -> None:
        log.info("export: skipping %s: %s", name, reason)
        self.skipped.append({"name": name, "reason": reason})

    def add(self, path: Path, *, format: str, precision: str, kind: str = "classifier", **extra: Any) -> dict:
        entry = artifact_entry(path, self.out_dir, format=format, precision=precision, kind=kind)
        entry.update(extra)
        self.artifacts.append(entry)
        return entry

    def verify(
        self,
        entry: dict,
        predict: Predict,
        reference: np.ndarray,
        *,
        classifier: bool = True,
        fp32: bool = False,
    ) -> np.ndarray:
        """Run the artifact on the val images, store its figures in `entry`; fp32 ones must match PyTorch."""
        outputs, stats = evaluate(
            predict,
            self.inputs,
            reference,
            self.labels if classifier else None,
            runs=self.settings.latency_runs,
            warmup=self.settings.latency_warmup,
            threads=self.threads,
        )
        if fp32:
            self.fail(entry["name"], fp32_problems(entry["name"], stats, reference))
        entry.update(stats)
        return outputs


def export_all(model: nn.Module, *, out_dir: Path, **kwargs: Any) -> dict:
    """Export `model` into `out_dir` (see `_export_into` for the arguments); returns the manifest.

    The export is built in a hidden folder beside `out_dir` and replaces it only once complete, so a crash
    or an interrupt keeps the previous export whole.
    """
    with staged_folder(Path(out_dir)) as work:
        manifest = _export_into(model, out_dir=work, **kwargs)
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
    cfg: DictConfig | dict,
    calibration_paths: list[str],
    val_samples: list[tuple[str, int]],
    metadata: dict,
    headless: nn.Module | None = None,
    head: nn.Module | None = None,
    train_samples: Sequence[tuple[str, int]] = (),
) -> dict:
    """Export `model` in every configured format to `out_dir`, verify each, and write manifest.json.

    `model` maps normalized (N, 3, S, S) float input to (N, len(classes)) logits; `data_config` is the run's
    eval preprocessing, which every input here and the app's preprocessing follow; `calibration_paths` are
    training images for int8 calibration; `metadata` (backbone, dataset, val metrics, config hash, ...) goes
    into the Core ML models, the manifest and the model card.
    `headless` (the model without its head), `head` and the labelled `train_samples` feed the feature
    extractor and UpdatableClassifier exports (`export.headless`, `export.updatable`).
    Returns the manifest. Failed formats are listed in its `errors` (never raised): exit non-zero on them.
    Raises ValueError for an invalid `cfg` before anything is written.
    """
    settings = ExportSettings.from_config(cfg)
    if "coreml" in settings.formats:
        from trainer.export.coreml import deployment_target

        deployment_target(settings.deployment_target)
    settings.on_device.check_data(settings.updatable, classes, [label for _, label in train_samples])
    model = copy.deepcopy(model).cpu().eval()
    image_size, mean, std = data_config.size, data_config.mean, data_config.std

    samples = _spread(val_samples, settings.max_images)
    inputs, kept, unreadable = load_inputs([path for path, _ in samples], data_config)
    run = _Run(
        out_dir=out_dir,
        settings=settings,
        inputs=inputs,
        labels=np.asarray([samples[i][1] for i in kept], dtype=np.int64),
        threads=torch.get_num_threads(),
        classes=list(classes),
        data_config=data_config,
    )
    if not len(inputs):
        run.warnings.append("no readable val images: the artifacts were exported but not verified")
    needs_calibration = ("onnx" in settings.formats and settings.onnx_int8) or (
        "coreml" in settings.formats and "w8a8" in settings.coreml_quantize
    )
    calibration = (
        load_inputs(_spread(calibration_paths, settings.calibration_images), data_config)[0]
        if needs_calibration
        else inputs[:0]
    )

    predict = torch_predictor(model)
    reference = run_batches(predict, inputs)
    example = torch.from_numpy(inputs[:1]) if len(inputs) else torch.randn(1, 3, image_size, image_size)
    user_metadata = {
        "resolution": image_size,
        "mean": list(mean),
        "std": list(std),
        "preprocess": data_config.to_dict(),
        **metadata,
    }

    if "torchscript" in settings.formats:
        _torchscript(run, model, example, reference)
    if "onnx" in settings.formats:
        _onnx(run, model, example, reference, calibration)
    if "coreml" in settings.formats:
        _coreml(run, model, classes, image_size, mean, std, reference, calibration, user_metadata)
    if settings.headless:
        _headless(run, headless, example, image_size, mean, std, user_metadata)
    updatable_swift = None
    if settings.updatable:
        from trainer.export.updatable_export import export_updatable

        updatable_swift = export_updatable(
            run,
            headless=headless,
            head=head,
            classes=classes,
            data_config=data_config,
            train_samples=train_samples,
            reference_logits=reference,
            user_metadata=user_metadata,
        )

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
        "metadata": metadata,
        "val_images": len(inputs),
        "unreadable_images": unreadable,
        "pytorch_val_top1": top1(reference, run.labels),
        "pytorch_latency_ms": (
            latency_ms(predict, inputs[:1], settings.latency_runs, settings.latency_warmup)
            if len(inputs)
            else None
        ),
        "threads": run.threads,
        "artifacts": run.artifacts,
        "skipped": run.skipped,
        "warnings": run.warnings,
        "errors": run.errors,
        "handoff": [],
        "versions": {p: _version(p) for p in ("torch", "onnx", "onnxruntime", "coremltools")},
    }
    with run.guard("handoff files"):
        manifest["handoff"].append(write_labels(out_dir, classes))
        package = swift_package(run.artifacts)
        if package:
            manifest["handoff"].append(write_swift(out_dir, package, data_config))
        else:
            run.skip("Classifier.swift", "no Core ML classifier was exported")
        if updatable_swift:
            manifest["handoff"].append(updatable_swift)
        manifest["handoff"].append(CARD_NAME)
        write_model_card(out_dir, manifest)
    write_manifest(out_dir, manifest)
    return manifest


def _version(package: str) -> str | None:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return None


def _torchscript(run: _Run, model: nn.Module, example: torch.Tensor, reference: np.ndarray) -> None:
    path = run.out_dir / TORCHSCRIPT_NAME
    with run.guard("torchscript"):
        export_torchscript(model, example, path)
        entry = run.add(path, format="torchscript", precision="fp32")
        run.verify(entry, torch_predictor(load_torchscript(path)), reference, fp32=True)
    if not run.settings.torchscript_lite:
        return
    reason = lite_unavailable_reason() or (None if path.exists() else "the TorchScript export failed")
    if reason:
        run.skip("torchscript_lite", reason)
        return
    with run.guard("torchscript_lite"):
        lite = run.out_dir / LITE_NAME
        export_lite(path, lite)
        entry = run.add(lite, format="torchscript_lite", precision="fp32")
        run.verify(entry, torch_predictor(load_lite(lite)), reference, fp32=True)


def _onnx(
    run: _Run, model: nn.Module, example: torch.Tensor, reference: np.ndarray, calibration: np.ndarray
) -> None:
    path = run.out_dir / ONNX_NAME
    metadata = onnx_metadata(run.classes, run.data_config, run.settings)
    fp32_outputs = None
    with run.guard("onnx_fp32"):
        info = export_onnx(model, example, path, opset=run.settings.onnx_opset, metadata=metadata)
        entry = run.add(path, format="onnx", precision="fp32", **info)
        fp32_outputs = run.verify(entry, onnx_predictor(path, run.threads), reference, fp32=True)
    if not run.settings.onnx_int8:
        return
    if fp32_outputs is None:
        run.skip("onnx_int8", "the ONNX fp32 export failed")
        return
    with run.guard("onnx_int8"):
        int8_path = run.out_dir / ONNX_INT8_NAME
        quantize_int8(path, int8_path, calibration, metadata=metadata)
        recipe = "static QDQ: per-channel int8 weights (7-bit range), uint8 activations, min/max calibration"
        entry = run.add(
            int8_path,
            format="onnx",
            precision="int8",
            quantization=recipe,
            calibration_images=len(calibration),
        )
        outputs = run.verify(entry, onnx_predictor(int8_path, run.threads), reference)
        fp32_top1, int8_top1 = top1(fp32_outputs, run.labels), top1(outputs, run.labels)
        if fp32_top1 is not None and int8_top1 is not None:
            entry["top1_agreement_vs_fp32"] = float((fp32_outputs.argmax(1) == outputs.argmax(1)).mean())
            entry["top1_drop_vs_fp32"] = round(100.0 * (fp32_top1 - int8_top1), 3)
            if entry["top1_drop_vs_fp32"] > MAX_INT8_TOP1_DROP:
                run.warnings.append(
                    f"onnx_int8 loses {entry['top1_drop_vs_fp32']:.2f} points of val top-1 against fp32 "
                    f"(> {MAX_INT8_TOP1_DROP})"
                )


def _coreml(
    run: _Run,
    model: nn.Module,
    classes: list[str],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    reference: np.ndarray,
    calibration: np.ndarray,
    user_metadata: dict[str, Any],
) -> None:
    from trainer.export import coreml

    norm = coreml.ImageNormalization.from_stats(mean, std)
    target = run.settings.deployment_target
    bases: dict[str, Any] = {}

    def base(precision: str) -> Any:
        """The converted model at `precision`, converted once (None once it failed)."""
        if precision not in bases:
            bases[precision] = None
            with run.guard(f"coreml_{precision} conversion"):
                bases[precision] = coreml.convert(
                    model,
                    image_size=image_size,
                    norm=norm,
                    classes=classes,
                    target_name=target,
                    precision=precision,
                )
        return bases[precision]

    for variant in run.settings.coreml_quantize:
        name = f"coreml_{variant}"
        reason = coreml.w8a8_skip_reason(target) if variant == "w8a8" else None
        if reason:
            run.skip(name, reason)
            continue
        precision = "fp32" if variant == "fp32" else "fp16"
        if base(precision) is None:
            run.skip(name, f"the Core ML {precision} conversion failed")
            continue
        with run.guard(name):
            mlmodel = base(precision)
            if variant not in ("fp32", "fp16"):
                mlmodel = coreml.compress(mlmodel, variant, coreml.to_pixels(calibration, mean, std))
            path = run.out_dir / f"{COREML_STEM}_{variant}.mlpackage"
            coreml.save(mlmodel, path, settings=run.settings, user_metadata=user_metadata, classifier=True)
            extra: dict[str, Any] = {
                "minimum_deployment_target": target,
                "weights_bytes": coreml.weights_bytes(path),
            }
            if coreml_verify.compressed_bits(variant) is not None:
                ratio = extra["weights_bytes"] / coreml.in_memory_weights_bytes(base("fp16"))
                expected, problems = coreml_verify.weight_ratio_problems(path, variant, ratio)
                extra.update(weights_ratio_vs_fp16=round(ratio, 4), weights_ratio_expected=round(expected, 4))
                run.fail(name, [f"{name}: {p}" for p in problems])
            stats = _verify_coreml(run, name, variant, path, classes, mean, std, softmax(reference))
            metadata = coreml_verify.package_metadata(user_metadata, stats)
            coreml.save(mlmodel, path, settings=run.settings, user_metadata=metadata, classifier=True)
            run.add(path, format="coreml", precision=variant, **extra, **stats)
            run.fail(
                name,
                coreml.check_spec(
                    path,
                    image_size=image_size,
                    norm=norm,
                    classes=classes,
                    user_metadata_keys=list(metadata),
                ),
            )


def _headless(
    run: _Run,
    headless: nn.Module | None,
    example: torch.Tensor,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    user_metadata: dict[str, Any],
) -> None:
    if headless is None:
        run.fail("headless", ["export.headless is true but no feature-extractor module was passed"])
        return
    extractor = _Flatten(copy.deepcopy(headless).cpu()).eval()
    reference = run_batches(torch_predictor(extractor), run.inputs)
    if "onnx" in run.settings.formats:
        with run.guard("headless_onnx_fp32"):
            path = run.out_dir / HEADLESS_ONNX_NAME
            info = export_onnx(
                extractor,
                example,
                path,
                opset=run.settings.onnx_opset,
                output_name="embedding",
                metadata=onnx_metadata(None, run.data_config, run.settings),
            )
            entry = run.add(path, format="onnx", precision="fp32", kind="embedding", **info)
            run.verify(entry, onnx_predictor(path, run.threads), reference, classifier=False, fp32=True)
    if "coreml" in run.settings.formats:
        from trainer.export import coreml

        with run.guard("headless_coreml_fp16"):
            norm = coreml.ImageNormalization.from_stats(mean, std)
            target = run.settings.deployment_target
            mlmodel = coreml.convert(
                extractor,
                image_size=image_size,
                norm=norm,
                classes=None,
                target_name=target,
                precision="fp16",
            )
            path = run.out_dir / f"{HEADLESS_COREML_STEM}_fp16.mlpackage"
            coreml.save(mlmodel, path, settings=run.settings, user_metadata=user_metadata, classifier=False)
            stats = _verify_coreml(run, "headless_coreml_fp16", "fp16", path, None, mean, std, reference)
            run.add(
                path,
                format="coreml",
                precision="fp16",
                kind="embedding",
                minimum_deployment_target=target,
                **stats,
            )
            run.fail(
                "headless_coreml_fp16",
                coreml.check_spec(
                    path,
                    image_size=image_size,
                    norm=norm,
                    classes=None,
                    user_metadata_keys=list(user_metadata),
                ),
            )


def _verify_coreml(
    run: _Run,
    name: str,
    variant: str,
    path: Path,
    classes: list[str] | None,
    mean: Sequence[float],
    std: Sequence[float],
    reference: np.ndarray,
) -> dict[str, Any]:
    """A saved package's figures from the reference executor (compared in probability space for a classifier)
    with its gate; on macOS, MLModel.predict's figures beside them. Failed checks go to the errors."""
    from trainer.export import coreml

    labels = run.labels if classes is not None else None
    predict = coreml_verify.reference_predictor(path, classes=classes, mean=mean, std=std)
    outputs, stats = coreml_verify.measure(
        predict, run.inputs, reference, labels, top1(reference, run.labels)
    )
    if variant == "fp32":
        run.fail(name, fp32_problems(name, stats, reference))
    stats["gate"] = coreml_verify.gate(variant, stats)
    run.fail(name, coreml_verify.gate_problem(name, stats["gate"]))
    if sys.platform == "darwin":
        native = coreml.coreml_predictor(path, classes=classes, mean=mean, std=std)
        _, stats["mlmodel_predict"] = evaluate(
            native,
            run.inputs,
            reference,
            labels,
            runs=run.settings.latency_runs,
            warmup=run.settings.latency_warmup,
            threads=run.threads,
        )
        stats["latency_ms"] = stats["mlmodel_predict"].get("latency_ms")
    else:
        stats.update(latency_ms=None, reason=f"latency: {coreml.NOT_MACOS_REASON}")
    return stats
