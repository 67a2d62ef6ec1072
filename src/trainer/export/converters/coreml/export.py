"""The `coreml` row of the format table (formats.py): ImageClassifier_<variant>.mlpackage for each
`export.coreml.quantize` variant and the headless FeatureExtractor, each measured on the val images by the
reference executor (`verify`, the one place that decides how a saved package is run: the executor everywhere,
MLModel.predict beside it on macOS), size-checked when compressed and spec-checked.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import coremltools as ct
import numpy as np
from PIL import Image
from torch import nn

from trainer.export.converters.coreml.convert import (
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    PROBS_OUTPUT,
    ImageNormalization,
    compress,
    convert,
    in_memory_weights_bytes,
    save,
    weight_const,
    weight_consts,
    weights_bytes,
)
from trainer.export.converters.coreml.gates import (
    RUNTIME,
    gate,
    gate_problem,
    measure,
    pixel_arrays,
    reference_predictor,
    weight_ratio_problems,
)
from trainer.export.converters.coreml.spec import check_spec
from trainer.export.converters.coreml.target import NOT_MACOS_REASON, w8a8_skip_reason
from trainer.export.converters.coreml.variants import compressed_bits
from trainer.export.converters.coreml.w8a8 import w8a8_module
from trainer.export.formats import FORMATS, RuntimeUnavailable
from trainer.export.job import ExportJob
from trainer.export.quantize.search import keep_float_search
from trainer.export.verify import (
    Predict,
    evaluate,
    fp32_problems,
    measured_metadata,
    softmax,
    top1,
    torch_predictor,
)

FORMAT = FORMATS["coreml"]


def to_pixels(inputs: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> list[Image.Image]:
    """The RGB images of preprocessed (N, 3, S, S) inputs, as Core ML's image input takes them."""
    return [Image.fromarray(a) for a in pixel_arrays(inputs, mean, std).transpose(0, 2, 3, 1)]


def coreml_predictor(
    package: Path, *, classes: list[str] | None, mean: Sequence[float], std: Sequence[float]
) -> Predict:
    """Predict with Core ML on the CPU (macOS only): class probabilities, or embeddings."""
    model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit.CPU_ONLY)

    def predict(batch: np.ndarray) -> np.ndarray:
        rows = []
        for image in to_pixels(batch, mean, std):
            result = model.predict({INPUT_NAME: image})
            if classes is None:
                rows.append(np.asarray(result[EMBEDDING_OUTPUT], np.float32).reshape(-1))
            else:
                rows.append(np.asarray([result[PROBS_OUTPUT][c] for c in classes], np.float32))
        return np.stack(rows)

    return predict


def export(job: ExportJob) -> None:
    """ImageClassifier_<variant>.mlpackage for each coreml.quantize variant, from one fp32 or fp16 conversion;
    each is measured by the reference executor (`verify`), gets its own figures in its metadata, and is
    size-checked when compressed and spec-checked."""
    norm = ImageNormalization.from_stats(job.mean, job.std)
    target = job.settings.coreml.minimum_deployment_target
    bases: dict[str, Any] = {}
    common = {"image_size": job.image_size, "norm": norm, "classes": job.classes, "target_name": target}

    def base(precision: str) -> Any:
        """The converted model at `precision`, converted once (None once it failed)."""
        if precision not in bases:
            bases[precision] = None
            with job.guard(f"coreml_{precision} conversion"):
                bases[precision] = convert(job.model, **common, precision=precision)
        return bases[precision]

    for variant in job.settings.coreml.quantize:
        name = f"coreml_{variant}"
        reason = w8a8_skip_reason(target) if variant == "w8a8" else None
        if reason:
            job.skip(name, reason)
            continue
        precision = "fp32" if variant == "fp32" else "fp16"
        if base(precision) is None:
            job.skip(name, f"the Core ML {precision} conversion failed")
            continue
        with job.guard(name):
            mlmodel, extra = base(precision), {"minimum_deployment_target": target}
            if variant == "w8a8":
                mlmodel, qat = _w8a8(job, common)
                extra.update(qat)
            path = job.out_dir / FORMAT.file("classifier", variant=variant)
            if variant in ("fp32", "fp16", "w8a8"):
                save(mlmodel, path, settings=job.settings, model_metadata=job.model_metadata, classifier=True)
            else:  # the keep_float search saves each copy it builds, the chosen one last
                mlmodel, kept = _compressed(job, mlmodel, variant, path)
                extra.update(kept)
            extra["weights_bytes"] = weights_bytes(path)
            if compressed_bits(variant) is not None:
                ratio = extra["weights_bytes"] / in_memory_weights_bytes(base("fp16"))
                expected, problems = weight_ratio_problems(
                    path, variant, ratio, len(extra.get("float_layers", []))
                )
                extra.update(weights_ratio_vs_fp16=round(ratio, 4), weights_ratio_expected=round(expected, 4))
                job.fail(name, [f"{name}: {p}" for p in problems])
            stats = verify(job, name, variant, path, job.classes, softmax(job.reference))
            metadata = measured_metadata(job.model_metadata, stats, RUNTIME)
            save(mlmodel, path, settings=job.settings, model_metadata=metadata, classifier=True)
            job.add(path, format="coreml", precision=variant, **extra, **stats)
            job.fail(name, _check_saved(job, path, norm, job.classes, metadata))


def _compressed(
    job: ExportJob, base: ct.models.MLModel, variant: str, path: Path
) -> tuple[ct.models.MLModel, dict[str, Any]]:
    """compress(base, variant) under export.int8.keep_float=auto (quantize/search.py): of the most
    int8-sensitive layers, those whose weight the program names (the Linear head) stay fp16 where that
    brings the held-out KL under max_kl. A head fitted on 40 photos put a weight of 291 on a feature that
    never fires, so per-channel int8 rounded the rest of its row to zero: 33.5% agreement with fp32 (docs/
    quantization.md). Returns the model and its manifest fields (float_layers, fp16_weights, the search)."""
    consts = weight_consts(base) if job.settings.int8.keep_float == "auto" else set()
    built: dict[str, Any] = {}

    def build(layers: list[str]) -> Predict:
        built["model"] = compress(base, variant, [weight_const(consts, layer) for layer in layers])
        save(built["model"], path, settings=job.settings, model_metadata=job.model_metadata, classifier=True)
        probabilities = reference_predictor(path, classes=job.classes, mean=job.mean, std=job.std)
        return lambda batch: np.log(np.maximum(probabilities(batch), 1e-12))  # the search compares logits

    layers, search = keep_float_search(
        job, build, keepable=lambda layer: weight_const(consts, layer) is not None
    )
    kept = [weight_const(consts, layer) for layer in layers]
    return built["model"], {"float_layers": layers, "fp16_weights": kept, "keep_float_search": search}


def _w8a8(job: ExportJob, common: dict[str, Any]) -> tuple[ct.models.MLModel, dict[str, Any]]:
    """The W8A8 program (w8a8.w8a8_module) and its manifest fields: quantization-aware with
    export.int8.method=qat, else post-training with export.int8.keep_float (the search measures the
    PyTorch module coremltools converts, as ExecuTorch's does; Core ML runs it to the same answers)."""
    settings = job.settings.int8
    if settings.method == "qat":
        images = job.read_training(settings.qat.images, False)
        quantized, record = w8a8_module(job.model, job.calibration, settings.qat, images)
        return convert(quantized, **common, precision="fp16"), {"qat": record}
    built: list[nn.Module] = []

    def build(layers: list[str]) -> Predict:
        built[:] = [w8a8_module(job.model, job.calibration, float_layers=layers)[0]]
        return torch_predictor(built[0])

    layers, search = keep_float_search(job, build)
    converted = convert(built[0], **common, precision="fp16")
    return converted, {"float_layers": layers, "keep_float_search": search}


def export_headless(job: ExportJob, extractor: nn.Module, reference: np.ndarray) -> None:
    """FeatureExtractor_fp16.mlpackage: output `embedding`, compared with PyTorch's `reference` embeddings."""
    with job.guard("headless_coreml_fp16"):
        norm = ImageNormalization.from_stats(job.mean, job.std)
        target = job.settings.coreml.minimum_deployment_target
        mlmodel = convert(
            extractor,
            image_size=job.image_size,
            norm=norm,
            classes=None,
            target_name=target,
            precision="fp16",
        )
        path = job.out_dir / FORMAT.file("headless")
        save(mlmodel, path, settings=job.settings, model_metadata=job.model_metadata, classifier=False)
        stats = verify(job, "headless_coreml_fp16", "fp16", path, None, reference)
        job.add(
            path,
            format="coreml",
            precision="fp16",
            kind="embedding",
            minimum_deployment_target=target,
            **stats,
        )
        job.fail("headless_coreml_fp16", _check_saved(job, path, norm, None, job.model_metadata))


def _check_saved(
    job: ExportJob,
    path: Path,
    norm: ImageNormalization,
    classes: list[str] | None,
    metadata: dict[str, Any],
) -> list[str]:
    return check_spec(
        path,
        image_size=job.image_size,
        norm=norm,
        classes=classes,
        model_metadata_keys=list(metadata),
    )


def verify(
    job: ExportJob,
    name: str,
    variant: str,
    path: Path,
    classes: list[str] | None,
    reference: np.ndarray,
) -> dict[str, Any]:
    """A saved package's figures from the reference executor on the val images (compared in probability
    space for a classifier) with its gate; on macOS MLModel.predict's figures beside them. Failed checks
    go to the job's errors."""
    labels = job.labels if classes is not None else None
    predict = reference_predictor(path, classes=classes, mean=job.mean, std=job.std)
    _, stats = measure(predict, job.inputs, reference, labels, top1(job.reference, job.labels))
    if variant == "fp32":
        job.fail(name, fp32_problems(name, stats, reference))
    stats["gate"] = gate(variant, stats)
    job.fail(name, gate_problem(name, stats["gate"]))
    if labels is not None and variant not in ("fp32", "fp16"):
        job.check_agreement(name, stats)
    try:
        check_runtime()
    except RuntimeUnavailable as exc:
        stats.update(latency_ms=None, reason=f"latency: {exc}")
        return stats
    _, stats["mlmodel_predict"] = evaluate(
        coreml_predictor(path, classes=classes, mean=job.mean, std=job.std),
        job.inputs,
        reference,
        labels,
        runs=job.settings.latency.runs,
        warmup=job.settings.latency.warmup,
        threads=job.threads,
    )
    stats["latency_ms"] = stats["mlmodel_predict"].get("latency_ms")
    return stats


def check_runtime() -> None:
    """Raise RuntimeUnavailable where Core ML cannot run models (everywhere but macOS)."""
    if sys.platform != "darwin":
        raise RuntimeUnavailable(NOT_MACOS_REASON)


def load(path: Path, manifest: dict[str, Any]) -> Predict:
    """Class probabilities of a classifier .mlpackage (trainer-predict, the benchmark)."""
    check_runtime()
    prep = manifest["preprocess"]
    return coreml_predictor(path, classes=manifest["classes"], mean=prep["mean"], std=prep["std"])
