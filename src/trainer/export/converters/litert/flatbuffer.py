"""Surgery on a .tflite flatbuffer that the converters do not offer: float32 ends on a full-integer model,
and the project's metadata entry."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from trainer.export.metadata import METADATA_NAME

STANDARD_NAME = "TFLITE_METADATA"  # standard_metadata.py's entry, read by Android's metadata libraries


def signature(model_bytes: bytes) -> dict[str, tuple[str, str]]:
    """Signature name -> (its one input name, its one output name)."""
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_content=model_bytes).get_signature_list()
    return {k: (v["inputs"][0], v["outputs"][0]) for k, v in signatures.items()}


def renamed_outputs(model_bytes: bytes, pattern: str) -> list[str]:
    """The model outputs written by an op that reads a tensor whose name matches `pattern` (its layer's
    weight) and whose own output does not: the head, whose output takes the signature's name
    (`serving_default_output_0_output`). ai-edge-quantizer finds an op by its output names, so that name
    is how the head is found."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(bytearray(model_bytes), 0)
    found = []
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        model_outputs = set(graph.OutputsAsNumpy().tolist())
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            outputs = [i for i in op.OutputsAsNumpy().tolist() if i in model_outputs]
            inputs = [graph.Tensors(i).Name().decode() for i in op.InputsAsNumpy().tolist() if i >= 0]
            names = [graph.Tensors(i).Name().decode() for i in outputs]
            if names and any(re.search(pattern, n) for n in inputs):
                found += [n for n in names if not re.search(pattern, n)]
    return found


def _opcode(model: Any, builtin: int) -> int:
    """Index of `builtin` in the model's operator codes, added when missing."""
    from ai_edge_litert import schema_py_generated as schema

    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 2
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def float_io(model_bytes: bytes) -> bytes:
    """Give a quantized model float32 input and output: a QUANTIZE op in front of each int8 input and a
    DEQUANTIZE op after each int8 output (what TFLite's converter does by default; ai-edge-quantizer leaves
    the ends int8). The signature then names the new float tensors."""
    from ai_edge_litert import schema_py_generated as schema

    model = _unpack(model_bytes)
    graph = model.subgraphs[0]
    quantize = _opcode(model, schema.BuiltinOperator.QUANTIZE)
    dequantize = _opcode(model, schema.BuiltinOperator.DEQUANTIZE)
    renamed: dict[int, int] = {}

    def float_twin(index: int) -> int:
        old = graph.tensors[index]
        new = schema.TensorT()
        new.shape, new.shapeSignature, new.name = old.shape, old.shapeSignature, old.name
        new.type, new.buffer = schema.TensorType.FLOAT32, 0
        old.name = old.name + b"_int8"
        graph.tensors.append(new)
        renamed[index] = len(graph.tensors) - 1
        return renamed[index]

    def operator(code: int, source: int, target: int) -> Any:
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = code, [source], [target]
        return op

    front, back = [], []
    for position, index in enumerate(list(graph.inputs)):
        if graph.tensors[index].type != schema.TensorType.FLOAT32:
            graph.inputs[position] = float_twin(index)
            front.append(operator(quantize, graph.inputs[position], index))
    for position, index in enumerate(list(graph.outputs)):
        if graph.tensors[index].type != schema.TensorType.FLOAT32:
            graph.outputs[position] = float_twin(index)
            back.append(operator(dequantize, index, graph.outputs[position]))
    graph.operators = front + list(graph.operators) + back
    for signature in model.signatureDefs or []:
        for tensor_map in [*signature.inputs, *signature.outputs]:
            tensor_map.tensorIndex = renamed.get(tensor_map.tensorIndex, tensor_map.tensorIndex)
    return _pack(model)


def _unpack(model_bytes: bytes) -> Any:
    """The model as schema objects, with weights the converter stored after the flatbuffer (buffer offset and
    size) read in, so that packing it again keeps them."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    for buffer in model.buffers or []:
        if buffer.offset > 1:
            start, end = buffer.offset, buffer.offset + buffer.size
            buffer.data = np.frombuffer(model_bytes[start:end], dtype=np.uint8)
            buffer.offset = buffer.size = 0
    return model


def _pack(model: Any) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def with_metadata(model_bytes: bytes, metadata: dict[str, Any], standard: bytes | None = None) -> bytes:
    """The model with `metadata` as JSON under METADATA_NAME and, when given, `standard` (a TFLite
    ModelMetadata flatbuffer) under standard_metadata.NAME, replacing earlier entries of those names."""
    from ai_edge_litert import schema_py_generated as schema

    model = _unpack(model_bytes)
    entries = {METADATA_NAME: json.dumps(metadata, default=str).encode()}
    if standard is not None:
        entries[STANDARD_NAME] = standard
    kept = [m for m in (model.metadata or []) if m.name.decode() not in entries]
    for name, data in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(data, dtype=np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name.encode(), len(model.buffers) - 1
        kept.append(entry)
    model.metadata = kept
    return _pack(model)


def metadata_buffer(path: Path, name: str) -> bytes:
    """The bytes of the model's metadata entry `name` (KeyError when it has none)."""
    model = _unpack(path.read_bytes())
    for entry in model.metadata or []:
        if entry.name.decode() == name:
            return bytes(model.buffers[entry.buffer].data)
    raise KeyError(f"{path} has no '{name}' metadata")


def read_metadata(path: Path) -> dict[str, Any]:
    """The JSON this export stores in a .tflite's metadata (classes, mean, std, input layout)."""
    return json.loads(metadata_buffer(path, METADATA_NAME).decode())
