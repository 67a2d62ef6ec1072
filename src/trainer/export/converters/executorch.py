"""ExecuTorch for PyTorch's own iOS and Android runtimes: model.pte (fp32) and model_int8.pte (PT2E XNNPACK
quantizer), both lowered to the XNNPACK delegate and run with ExecuTorch's Python runtime.

The `executorch` row of the format table (formats.py). Input: float32 NCHW (1, 3, S, S), normalized
((pixel / 255 - mean) / std, as ExecuTorch's Android `TensorImageUtils.bitmapToFloat32Tensor` does); output:
(1, classes) logits, like the ONNX and TorchScript files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.export.formats import FORMATS
from trainer.export.job import ExportJob
from trainer.export.metadata import METADATA_NAME, as_json
from trainer.export.quantize import pt2e
from trainer.export.quantize.search import keep_float_search
from trainer.export.verify import Predict, torch_predictor
from trainer.utils.files import atomic_output
from trainer.utils.native_output import native_output_to_log

FORMAT = FORMATS["executorch"]
INT8_RECIPE = (
    "PT2E XNNPACKQuantizer symmetric config: per-channel int8 weights, int8 activations, "
    "min/max calibration; float32 input and output"
)
QAT_RECIPE = f"{INT8_RECIPE}, then a quantization-aware fine-tune (PT2E QAT) towards the fp32 model's answers"
INPUT = "float32 NCHW (1, 3, S, S), (pixel/255 - mean)/std"


def export(job: ExportJob) -> None:
    """model.pte (must match PyTorch) and, with executorch.int8, model_int8.pte compared with it."""
    path = job.out_dir / FORMAT.file("fp32")
    example = (job.example[:1],)
    fp32_outputs = None
    with job.guard("executorch_fp32"):
        _write(path, _lower(torch.export.export(job.model, example), job.model_metadata))
        entry = job.add(path, format="executorch", precision="fp32", delegate="XNNPACK", input=INPUT)
        fp32_outputs = job.verify(entry, executorch_predictor(path, job.threads), job.reference, fp32=True)
    made = fp32_outputs is not None
    if not job.copy_of_fp32("executorch_int8", job.settings.executorch.int8, made, "ExecuTorch"):
        return
    with job.guard("executorch_int8"):
        path = job.out_dir / FORMAT.file("int8")
        quantized, layers, record = _int8(job, example)
        _write(path, _lower(torch.export.export(quantized, example), job.model_metadata))
        entry = job.add(
            path,
            format="executorch",
            precision="int8",
            delegate="XNNPACK",
            quantization=QAT_RECIPE if job.settings.int8.method == "qat" else INT8_RECIPE,
            calibration_images=len(job.calibration),
            input=INPUT,
            float_layers=layers,
            **record,
        )
        outputs = job.verify(entry, executorch_predictor(path, job.threads), job.reference)
        job.compare_with_fp32("executorch_int8", entry, fp32_outputs, outputs)


def load(path: Path, manifest: dict[str, Any]) -> Predict:
    """An ExecuTorch runtime predictor with torch's thread count."""
    return executorch_predictor(path, torch.get_num_threads())


def executorch_predictor(path: Path, threads: int) -> Predict:
    """Run a .pte with ExecuTorch's Python runtime (XNNPACK on `threads` threads), one image at a time (the
    program has batch size 1)."""
    with native_output_to_log("the ExecuTorch runtime"):
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        portable_lib._unsafe_reset_threadpool(threads)  # nothing runs yet: the reset is safe here
        method = Runtime.get().load_program(str(path)).load_method("forward")

    def predict(batch: np.ndarray) -> np.ndarray:
        rows = [method.execute([torch.from_numpy(image[None])])[0] for image in batch]
        return torch.cat(rows).float().numpy()

    return predict


def _int8(job: ExportJob, example: tuple[torch.Tensor]) -> tuple[nn.Module, list[str], dict[str, Any]]:
    """The int8 module, quantization-aware (export.int8.method=qat) or post-training with
    export.int8.keep_float, the layers it keeps float and its record for the manifest."""
    settings = job.settings.int8
    if settings.method == "qat":
        images = job.read_training(settings.qat.images, False)
        quantized, record = pt2e.qat(job.model, job.calibration, images, settings.qat)
        return quantized, [], {"qat": record}
    built: list[nn.Module] = []

    def build(layers: list[str]) -> Predict:
        built[:] = [pt2e.ptq(job.model, example, job.calibration, layers)]
        return torch_predictor(built[0])

    layers, search = keep_float_search(job, build, batch_size=1)
    return built[0], layers, {"keep_float_search": search}


def _lower(program: torch.export.ExportedProgram, metadata: dict[str, Any]) -> bytes:
    """The .pte bytes of an exported program, with every supported subgraph delegated to XNNPACK and the
    metadata as JSON returned by the method METADATA_NAME."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with native_output_to_log("the ExecuTorch lowering"):
        edge = to_edge_transform_and_lower(
            program, partitioner=[XnnpackPartitioner()], constant_methods={METADATA_NAME: as_json(metadata)}
        )
        return edge.to_executorch().buffer


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata a .pte carries, read by ExecuTorch's own runtime."""
    with native_output_to_log("the ExecuTorch runtime"):
        from executorch.runtime import Runtime

        method = Runtime.get().load_program(str(path)).load_method(METADATA_NAME)
    return json.loads(method.execute([])[0])


def _write(path: Path, program: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(program)
