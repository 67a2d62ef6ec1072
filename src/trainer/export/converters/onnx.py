"""ONNX export (fp32, dynamic batch) and static int8 QDQ quantization, plus an ONNX Runtime predictor.

The `onnx` row of the format table (formats.py). Input `image`: normalized float32 (N, 3, S, S); output
`logits` (or `embedding` for the feature extractor). Each file carries its labels and preprocessing in
`metadata_props`, where Android apps read them.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from trainer.data.data_config import DataConfig
from trainer.export.formats import FORMATS
from trainer.export.job import ExportJob
from trainer.export.metadata import as_strings
from trainer.export.quantize.search import keep_float_search
from trainer.export.quantize.sensitivity import weighted_layers
from trainer.export.settings import ONNX_CALIBRATION_METHODS, ExportSettings
from trainer.export.verify import Predict
from trainer.utils.files import TMP_PREFIX, atomic_output

log = logging.getLogger(__name__)

INPUT_NAME = "image"
FORMAT = FORMATS["onnx"]
INT8_RECIPE = "static QDQ: per-channel int8 weights, uint8 activations"
FLOAT_ROLES = {"first_conv": ("Conv",), "classifier": ("Gemm", "MatMul")}  # export.onnx.keep_float names
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")  # the nodes of the model's Conv2d / Linear layers
ACTIVATIONS = ("Relu", "Clip")  # kept as nodes in a mixed-precision copy (QDQKeepRemovableActivations)


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


def _embed_metadata(path: Path, metadata: Mapping[str, str] | None) -> None:
    """Set `metadata` as the file's metadata_props (replacing any the exporter or quantizer left)."""
    if metadata is None:
        return
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, dict(metadata))
    onnx.save(model, str(path))


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
        _embed_metadata(tmp, metadata)
        info["opset"] = _check(tmp, output_name)
    return info


class _ArrayReader(CalibrationDataReader):
    """Feeds calibration images to quantize_static in small batches."""

    def __init__(self, images: np.ndarray, batch_size: int = 8):
        self._batches = iter([images[i : i + batch_size] for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def float_nodes(model: onnx.ModelProto, keep_float: list[str]) -> list[str]:
    """The node names export.onnx.keep_float asks to leave in float: `first_conv` (the graph's first Conv),
    `classifier` (its last Gemm/MatMul), or node names of the prepared graph."""
    names, nodes = [], list(model.graph.node)
    for wanted in keep_float:
        if wanted in FLOAT_ROLES:
            matching = [n.name for n in nodes if n.op_type in FLOAT_ROLES[wanted]]
            if matching:
                names.append(matching[0] if wanted == "first_conv" else matching[-1])
        elif any(n.name == wanted for n in nodes):
            names.append(wanted)
        else:
            raise ValueError(
                f"export.onnx.keep_float: no node '{wanted}' in the graph; use first_conv, classifier or one "
                f"of its node names (e.g. {nodes[0].name if nodes else 'none'})"
            )
    return names


def layer_nodes(model: onnx.ModelProto, order: Sequence[str], layers: Sequence[str]) -> list[str]:
    """The node names of the PyTorch `layers` (Conv2d / Linear module names), matched by position:
    `order` is the model's weighted layers in forward order, the graph order of its Conv/Gemm/MatMul nodes."""
    weighted = [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS]
    if layers and len(weighted) != len(order):
        raise ValueError(
            f"export.int8.keep_float=auto: the ONNX graph has {len(weighted)} Conv/Gemm/MatMul nodes but "
            f"the model {len(order)} Conv2d/Linear layers, so they cannot be matched; "
            "set export.int8.keep_float=none"
        )
    by_layer = dict(zip(order, weighted, strict=False))
    return [by_layer[layer] for layer in layers]


def quantize_int8(
    fp32_path: Path,
    path: Path,
    calibration: np.ndarray,
    *,
    metadata: Mapping[str, str] | None = None,
    method: str = "minmax",
    keep_float: list[str] | None = None,
    float_layers: Sequence[str] = (),
    layer_order: Sequence[str] = (),
    reduce_range: bool = False,
) -> list[str]:
    """Static int8 QDQ copy of an fp32 ONNX model, calibrated on `calibration` images by `method` (a key of
    ONNX_CALIBRATION_METHODS) with the `keep_float` nodes and the nodes of the `float_layers` (module names,
    matched through `layer_order`: layer_nodes) left in float; returns those node names.

    Per-channel int8 weights, uint8 activations: ONNX Runtime's CPU recipe. `reduce_range` (7-bit weights)
    is for x86 CPUs without VNNI, where u8 x s8 products can saturate; on a VNNI CPU it only adds noise
    (trashnet MobileNetV2: agreement with fp32 92.4% with it, 95.6% without; docs/quantization.md).
    quant_pre_process (shape inference + graph optimization) runs first, as ONNX Runtime's guide asks.
    """
    if not len(calibration):
        raise ValueError("no readable calibration images for int8 quantization")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=TMP_PREFIX) as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        graph = onnx.load(str(prepared))
        excluded = float_nodes(graph, keep_float or []) + layer_nodes(graph, layer_order, float_layers)
        with atomic_output(path) as tmp:
            quantize_static(
                str(prepared),
                str(tmp),
                _ArrayReader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                # a float node reads the float tensor before the Q/DQ pair (_float_inputs): a Relu/Clip
                # must stay a node there, not be folded into the quantizer's clamp
                extra_options={"QDQKeepRemovableActivations": bool(excluded)},
                calibrate_method=CalibrationMethod[ONNX_CALIBRATION_METHODS[method]],
            )
            _float_inputs(tmp, excluded)
            _embed_metadata(tmp, metadata)
            onnx.checker.check_model(str(tmp))
    return excluded


def _float_inputs(path: Path, names: Sequence[str]) -> None:
    """Feed the `names` nodes the float tensors before the QuantizeLinear / DequantizeLinear pairs on their
    input, through any Relu / Clip between them and the previous layer: excluded from quantization, a node
    would still read the int8-rounded output of the quantized node before it, the noise that made its
    layer sensitive."""
    if not names:
        return
    model = onnx.load(str(path))
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        current = node if node.name in names else None
        while current is not None:
            dequantize = producers.get(current.input[0])
            quantize = producers.get(dequantize.input[0]) if dequantize is not None else None
            if quantize is None or (dequantize.op_type, quantize.op_type) != (
                "DequantizeLinear",
                "QuantizeLinear",
            ):
                break
            current.input[0] = quantize.input[0]
            upstream = producers.get(current.input[0])
            current = upstream if upstream is not None and upstream.op_type in ACTIVATIONS else None
    onnx.save(model, str(path))


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
