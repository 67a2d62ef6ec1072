"""ONNX static int8 (QDQ) copies: onnxruntime's quantize_static, with nodes left float (export.onnx.keep_float
by name or role, export.int8.keep_float=auto by layer) reading float inputs."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from trainer.export.settings import ONNX_CALIBRATION_METHODS
from trainer.utils.files import TMP_PREFIX, atomic_output

FLOAT_ROLES = {"first_conv": ("Conv",), "classifier": ("Gemm", "MatMul")}  # export.onnx.keep_float names
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")  # the nodes of the model's Conv2d / Linear layers
ACTIVATIONS = ("Relu", "Clip")  # kept as nodes in a mixed-precision copy (QDQKeepRemovableActivations)


def embed_metadata(path: Path, metadata: Mapping[str, str] | None) -> None:
    """Set `metadata` as the file's metadata_props (replacing any the exporter or quantizer left)."""
    if metadata is None:
        return
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, dict(metadata))
    onnx.save(model, str(path))


class _ArrayReader(CalibrationDataReader):
    """Feeds calibration images to quantize_static in small batches."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 8):
        self._input = input_name
        self._batches = iter([images[i : i + batch_size] for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input: batch}


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
                _ArrayReader(calibration, graph.graph.input[0].name),
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
            embed_metadata(tmp, metadata)
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
