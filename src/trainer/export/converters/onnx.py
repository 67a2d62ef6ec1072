"""ONNX export (fp32, dynamic batch) and static int8 QDQ quantization, plus an ONNX Runtime predictor.

The `onnx` row of the format table (formats.py). Input `image`: normalized float32 (N, 3, S, S); output
`logits` (or `embedding` for the feature extractor). Each file carries its labels and preprocessing in
`metadata_props`, where Android apps read them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from trainer.data.data_config import DataConfig
from trainer.export.formats import FORMATS
from trainer.export.job import ExportJob
from trainer.export.metadata import as_strings
from trainer.export.quantize.onnx_int8 import embed_metadata, quantize_int8
from trainer.export.quantize.search import keep_float_search
from trainer.export.quantize.sensitivity import weighted_layers
from trainer.export.settings import ExportSettings
from trainer.export.verify import Predict
from trainer.utils.files import atomic_output

log = logging.getLogger(__name__)

INPUT_NAME = "image"
FORMAT = FORMATS["onnx"]
INT8_RECIPE = "static QDQ: per-channel int8 weights, uint8 activations"


def _export(
    model: nn.Module, example: torch.Tensor, path: Path, output_name: str, opset: int | None, dynamo: bool
):
    """One torch.onnx.export call with a dynamic batch axis, through either exporter."""
    common = {"input_names": [INPUT_NAME], "output_names": [output_name], "opset_version": opset}
    if dynamo:
        batch = torch.export.Dim("batch")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
            **common,
        )
    else:
        axes = {INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}}
        torch.onnx.export(model, (example,), str(path), dynamo=False, dynamic_axes=axes, **common)


def _check(path: Path, output_name: str) -> int:
    """onnx.checker plus the interface apps rely on; returns the default-domain opset."""
    onnx.checker.check_model(str(path))
    graph_model = onnx.load(str(path), load_external_data=False)
    graph = graph_model.graph
    inputs = [i.name for i in graph.input]
    outputs = [o.name for o in graph.output]
    if inputs != [INPUT_NAME] or outputs != [output_name]:
        raise ValueError(
            f"ONNX graph has inputs {inputs} / outputs {outputs}, expected [{INPUT_NAME}] / [{output_name}]"
        )
    if graph.input[0].type.tensor_type.shape.dim[0].dim_value:
        raise ValueError("ONNX graph has a fixed batch size; expected a dynamic batch axis")
    return next(o.version for o in graph_model.opset_import if o.domain in ("", "ai.onnx"))


def onnx_metadata(
    classes: list[str] | None, data_config: DataConfig, settings: ExportSettings
) -> dict[str, str]:
    """metadata_props for an ONNX file: labels (classifiers), input size, mean/std, preprocessing, author."""
    props = {
        "image_size": str(data_config.size),
        "mean": json.dumps(list(data_config.mean)),
        "std": json.dumps(list(data_config.std)),
        "preprocess": json.dumps(data_config.to_dict()),
        "input": f"float32 '{INPUT_NAME}' (N, 3, {data_config.size}, {data_config.size}), RGB: "
        f"{data_config.describe()}",
        "author": settings.author,
        "license": settings.license,
        "version": settings.version,
        "description": settings.description,
    }
    if classes is not None:
        props["labels"] = json.dumps(list(classes), ensure_ascii=False)
    return props


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    opset: int | None,
    metadata: Mapping[str, str] | None = None,
    output_name: str = "logits",
) -> dict[str, Any]:
    """Write `model` as checked ONNX at `path`; returns the exporter used and the opset for the manifest.

    The torch.export-based exporter (torch's default, needs onnxscript) goes first; a model it cannot capture
    falls back to the TorchScript-based exporter, and the manifest records why.
    """
    example = example.expand(2, *example.shape[1:]).contiguous()  # batch 2: no 0/1 specialization of the axis
    info: dict[str, Any] = {"exporter": "dynamo"}
    with atomic_output(path) as tmp:
        try:
            _export(model, example, tmp, output_name, opset, dynamo=True)
        except Exception as exc:  # noqa: BLE001 - any capture failure gets the second exporter
            log.warning(
                "torch.export-based ONNX export failed (%s); using the TorchScript-based exporter", exc
            )
            info = {"exporter": "torchscript", "fallback_reason": f"{type(exc).__name__}: {exc}"[:500]}
            tmp.unlink(missing_ok=True)
            _export(model, example, tmp, output_name, opset, dynamo=False)
        embed_metadata(tmp, metadata)
        info["opset"] = _check(tmp, output_name)
    return info


def onnx_predictor(path: Path, threads: int) -> Predict:
    """Predict with ONNX Runtime on CPU using `threads` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def predict(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {INPUT_NAME: batch})[0]

    return predict


def export(job: ExportJob) -> None:
    """model.onnx (must match PyTorch) and, with onnx.int8, model_int8.onnx compared with it."""
    path = job.out_dir / FORMAT.file("fp32")
    metadata = {**onnx_metadata(job.classes, job.data_config, job.settings), **as_strings(job.model_metadata)}
    fp32_outputs = None
    with job.guard("onnx_fp32"):
        info = export_onnx(job.model, job.example, path, opset=job.settings.onnx.opset, metadata=metadata)
        entry = job.add(path, format="onnx", precision="fp32", **info)
        fp32_outputs = job.verify(entry, onnx_predictor(path, job.threads), job.reference, fp32=True)
    if not job.copy_of_fp32("onnx_int8", job.settings.onnx.int8, fp32_outputs is not None, "ONNX"):
        return
    with job.guard("onnx_int8"):
        int8_path = job.out_dir / FORMAT.file("int8")
        onnx_settings, order = job.settings.onnx, weighted_layers(job.model, job.example)
        kept: list[str] = []

        def build(layers: list[str]) -> Predict:
            kept[:] = quantize_int8(
                path,
                int8_path,
                job.calibration,
                metadata=metadata,
                method=onnx_settings.calibration_method,
                keep_float=onnx_settings.keep_float,
                float_layers=layers,
                layer_order=order,
                reduce_range=onnx_settings.reduce_range,
            )
            return onnx_predictor(int8_path, job.threads)

        layers, search = keep_float_search(job, build)
        bits = "7-bit range" if onnx_settings.reduce_range else "full range"
        entry = job.add(
            int8_path,
            format="onnx",
            precision="int8",
            quantization=f"{INT8_RECIPE} ({bits}), {onnx_settings.calibration_method} calibration",
            calibration_images=len(job.calibration),
            float_nodes=kept,
            float_layers=layers,
            keep_float_search=search,
        )
        outputs = job.verify(entry, onnx_predictor(int8_path, job.threads), job.reference)
        job.compare_with_fp32("onnx_int8", entry, fp32_outputs, outputs)


def export_headless(job: ExportJob, extractor: nn.Module, reference: np.ndarray) -> None:
    """feature_extractor.onnx: output `embedding`, compared with PyTorch's `reference` embeddings."""
    with job.guard("headless_onnx_fp32"):
        path = job.out_dir / FORMAT.file("headless")
        info = export_onnx(
            extractor,
            job.example,
            path,
            opset=job.settings.onnx.opset,
            output_name="embedding",
            metadata=onnx_metadata(None, job.data_config, job.settings),
        )
        entry = job.add(path, format="onnx", precision="fp32", kind="embedding", **info)
        job.verify(entry, onnx_predictor(path, job.threads), reference, classifier=False, fp32=True)


def load(path: Path, manifest: dict[str, Any]) -> Predict:
    """An ONNX Runtime predictor with torch's thread count."""
    return onnx_predictor(path, torch.get_num_threads())
