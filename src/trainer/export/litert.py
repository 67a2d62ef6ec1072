"""LiteRT (TFLite) for Android: model.tflite (fp32), model_fp16.tflite and model_int8.tflite, converted with
litert-torch and run with the ai-edge-litert interpreter.

The `litert` row of the format table (formats.py). Input: one float32 NHWC (1, S, S, 3) RGB image of raw 0-255
pixel values, as an Android Bitmap gives them; the normalization (pixel / 255 - mean) / std is inside the
model, as in Core ML. Output: (1, classes) logits. fp16 stores the weights as float16 (dequantized on load on
the CPU, used as is by the GPU delegate); int8 is full-integer post-training quantization (int8 weights per
channel and activations, min/max calibrated on training images) with QUANTIZE / DEQUANTIZE ops added at the
ends, so its input and output stay float32 and the app code is the same for all three. The classes, mean/std
and the input layout are stored in the model's metadata (entry METADATA_NAME, JSON).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.export.job import ExportJob
from trainer.export.manifest import atomic_output
from trainer.export.verify import Predict

FILES = {"fp32": "model.tflite", "fp16": "model_fp16.tflite", "int8": "model_int8.tflite"}
METADATA_NAME = "trainer"
INT8_RECIPE = (
    "full-integer static PTQ (ai-edge-quantizer static_wi8_ai8): per-channel int8 weights, int8 activations, "
    "min/max calibration; float32 input and output"
)
FP16_RECIPE = "float16 weights (ai-edge-quantizer float casting), float32 compute on CPU"
INPUT = "float32 NHWC (1, S, S, 3) RGB pixels 0-255; the normalization (pixel/255 - mean)/std is inside"


class PixelsNHWC(nn.Module):
    """The graph LiteRT runs: raw NHWC 0-255 RGB pixels, normalized inside, then the classifier."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        std64, mean64 = np.asarray(std, np.float64), np.asarray(mean, np.float64)
        self.register_buffer("scale", _channels(1.0 / (255.0 * std64)))
        self.register_buffer("shift", _channels(-mean64 / std64))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels.permute(0, 3, 1, 2) * self.scale + self.shift)


def _channels(values: np.ndarray) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)


def to_pixels(inputs: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalized NCHW inputs back to the NHWC 0-255 float pixels the app passes (not rounded: the fp32
    comparison must see the same image PyTorch saw)."""
    pixels = (inputs * np.reshape(std, (1, 3, 1, 1)) + np.reshape(mean, (1, 3, 1, 1))) * 255.0
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1), dtype=np.float32)


def export(job: ExportJob) -> None:
    """model.tflite (must match PyTorch), then with litert.fp16 / litert.int8 the smaller copies of it."""
    path = job.out_dir / FILES["fp32"]
    fp32_bytes, fp32_outputs = None, None
    with job.guard("litert_fp32"):
        fp32_bytes = _convert(PixelsNHWC(job.model, job.mean, job.std).eval(), job.image_size)
        _write(job, path, fp32_bytes, "fp32")
        entry = job.add(path, format="litert", precision="fp32", input=INPUT)
        fp32_outputs = job.verify(entry, _predictor(path, job), job.reference, fp32=True)
    for precision, wanted in (("fp16", job.settings.litert.fp16), ("int8", job.settings.litert.int8)):
        if wanted and (fp32_bytes is None or fp32_outputs is None):
            job.skip(f"litert_{precision}", "the LiteRT fp32 export failed")
        elif wanted:
            with job.guard(f"litert_{precision}"):
                _quantized(job, precision, fp32_bytes, fp32_outputs)


def _quantized(job: ExportJob, precision: str, fp32_bytes: bytes, fp32_outputs: np.ndarray) -> None:
    """model_fp16.tflite or model_int8.tflite, run on the val images and compared with the fp32 model."""
    path = job.out_dir / FILES[precision]
    if precision == "fp16":
        _write(job, path, _fp16(fp32_bytes), precision)
        entry = job.add(path, format="litert", precision=precision, quantization=FP16_RECIPE, input=INPUT)
    else:
        pixels = to_pixels(job.calibration, job.mean, job.std)
        _write(job, path, _int8(fp32_bytes, pixels), precision)
        entry = job.add(
            path,
            format="litert",
            precision=precision,
            quantization=INT8_RECIPE,
            calibration_images=len(pixels),
            input=INPUT,
        )
    outputs = job.verify(entry, _predictor(path, job), job.reference)
    job.compare_with_fp32(f"litert_{precision}", entry, fp32_outputs, outputs)


def load(path: Path, manifest: dict[str, Any]) -> Predict:
    """An ai-edge-litert interpreter predictor, fed the manifest's normalization undone (raw pixels)."""
    prep = manifest["preprocess"]
    return litert_predictor(path, prep["mean"], prep["std"], torch.get_num_threads())


def litert_predictor(path: Path, mean: Sequence[float], std: Sequence[float], threads: int) -> Predict:
    """Run a .tflite image classifier with the LiteRT interpreter (CPU, XNNPACK) on normalized NCHW batches,
    one image at a time (the model has batch size 1, as on the phone)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    (image,), (logits,) = interpreter.get_input_details(), interpreter.get_output_details()

    def predict(batch: np.ndarray) -> np.ndarray:
        rows = []
        for pixels in to_pixels(batch, mean, std):
            interpreter.set_tensor(image["index"], pixels[None])
            interpreter.invoke()
            rows.append(interpreter.get_tensor(logits["index"]).reshape(-1).copy())
        return np.stack(rows)

    return predict


def read_metadata(path: Path) -> dict[str, Any]:
    """The JSON this export stores in a .tflite's metadata (classes, mean, std, input layout)."""

    model = _unpack(path.read_bytes())
    for entry in model.metadata or []:
        if entry.name.decode() == METADATA_NAME:
            return json.loads(bytes(model.buffers[entry.buffer].data).decode())
    raise KeyError(f"{path} has no '{METADATA_NAME}' metadata")


def _predictor(path: Path, job: ExportJob) -> Predict:
    return litert_predictor(path, job.mean, job.std, job.threads)


def _metadata(job: ExportJob) -> dict[str, Any]:
    return {
        "classes": job.classes,
        "mean": list(job.mean),
        "std": list(job.std),
        "input": INPUT,
        "output": "float32 (1, classes) logits; apply softmax for probabilities",
        **{k: v for k, v in job.user_metadata.items() if k not in ("mean", "std")},
    }


def _convert(module: nn.Module, image_size: int) -> bytes:
    """fp32 .tflite bytes of `module` for one (1, S, S, 3) image; litert-torch's progress lines are muted."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import litert_torch
    from litert_torch import progress

    example = (torch.rand(1, image_size, image_size, 3) * 255.0,)
    quiet, progress.console.quiet = progress.console.quiet, True
    try:
        return litert_torch.convert(module, example).model_content()
    finally:
        progress.console.quiet = quiet


def _fp16(fp32_bytes: bytes) -> bytes:
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    q = quantizer.Quantizer(bytearray(fp32_bytes))
    q.add_weight_only_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        num_bits=16,
        algorithm_key=AlgorithmName.FLOAT_CASTING,
    )
    with _quiet():
        return bytes(q.quantize().quantized_model)


def _int8(fp32_bytes: bytes, pixels: np.ndarray) -> bytes:
    """Full-integer int8 copy, calibrated on NHWC `pixels`, with float32 input and output kept."""
    from ai_edge_quantizer import quantizer, recipe

    if not len(pixels):
        raise ValueError("no readable calibration images for int8 quantization")
    q = quantizer.Quantizer(bytearray(fp32_bytes), recipe.static_wi8_ai8())
    signature = _signature(fp32_bytes)
    (name, (input_name, _)) = next(iter(signature.items()))
    samples = {name: [{input_name: p[None]} for p in pixels]}
    with _quiet():
        quantized = q.quantize(q.calibrate(samples)).quantized_model
    return _float_io(bytes(quantized))


@contextmanager
def _quiet() -> Iterator[None]:
    """Mute ai-edge-quantizer's progress bars, size report and debug-mode warning (errors still raise)."""
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _signature(model_bytes: bytes) -> dict[str, tuple[str, str]]:
    """Signature name -> (its one input name, its one output name)."""
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_content=model_bytes).get_signature_list()
    return {k: (v["inputs"][0], v["outputs"][0]) for k, v in signatures.items()}


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


def _float_io(model_bytes: bytes) -> bytes:
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


def _with_metadata(model_bytes: bytes, metadata: dict[str, Any]) -> bytes:
    """The model with `metadata` as JSON under METADATA_NAME (replacing an earlier entry of that name)."""
    from ai_edge_litert import schema_py_generated as schema

    model = _unpack(model_bytes)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata, default=str).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME.encode(), len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != entry.name] + [entry]
    return _pack(model)


def _write(job: ExportJob, path: Path, model_bytes: bytes, precision: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(_with_metadata(model_bytes, {**_metadata(job), "precision": precision}))
