"""LiteRT (TFLite) for Android: model.tflite (fp32), model_fp16.tflite and model_int8.tflite, converted with
litert-torch and run with the ai-edge-litert interpreter.

The `litert` row of the format table (formats.py). Input: one float32 NHWC (1, S, S, 3) RGB image of raw 0-255
pixel values, as an Android Bitmap gives them; the normalization (pixel / 255 - mean) / std is inside the
model, as in Core ML. Output: (1, classes) logits. fp16 stores the weights as float16 (dequantized on load on
the CPU, used as is by the GPU delegate); int8 is full-integer post-training quantization (int8 weights per
channel and activations, min/max calibrated on training images) with QUANTIZE / DEQUANTIZE ops added at the
ends, so its input and output stay float32 and the app code is the same for all three. The classes, mean/std
and the input layout are stored in the model's metadata (entry `trainer`, JSON: flatbuffer.py), and the
standard TFLite Metadata with labels.txt packed in (standard_metadata.py) for Android's metadata readers.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.export.converters.litert import standard_metadata
from trainer.export.converters.litert.flatbuffer import float_io, renamed_outputs, signature, with_metadata
from trainer.export.formats import FORMATS
from trainer.export.job import ExportJob
from trainer.export.manifest import sha256, size_bytes
from trainer.export.pixels import PixelNormalization
from trainer.export.quantize.search import keep_float_search
from trainer.export.verify import Predict, measured_metadata
from trainer.utils.files import atomic_output
from trainer.utils.native_output import native_output_to_log

FORMAT = FORMATS["litert"]
INT8_RECIPE = (
    "full-integer static PTQ (ai-edge-quantizer static_wi8_ai8): per-channel int8 weights, int8 activations, "
    "min/max over all calibration images; float32 input and output"
)
RUNTIME = "ai-edge-litert interpreter (CPU, XNNPACK)"
FP16_RECIPE = "float16 weights (ai-edge-quantizer float casting), float32 compute on CPU"
INPUT = "float32 NHWC (1, S, S, 3) RGB pixels 0-255; the normalization (pixel/255 - mean)/std is inside"


class PixelsNHWC(nn.Module):
    """The graph LiteRT runs: raw NHWC 0-255 RGB pixels, normalized inside, then the classifier."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        norm = PixelNormalization.of(mean, std)
        self.register_buffer("scale", _channels(norm.scale))
        self.register_buffer("shift", _channels(norm.shift))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels.permute(0, 3, 1, 2) * self.scale + self.shift)


def _channels(values: np.ndarray) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)


def to_pixels(inputs: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalized NCHW inputs back to the NHWC 0-255 float pixels the app passes (not rounded: the fp32
    comparison must see the same image PyTorch saw)."""
    pixels = PixelNormalization.of(mean, std).pixels(inputs)
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1), dtype=np.float32)


def export(job: ExportJob) -> None:
    """model.tflite (must match PyTorch), then with litert.fp16 / litert.int8 the smaller copies of it."""
    path = job.out_dir / FORMAT.file("fp32")
    fp32_bytes, fp32_outputs = None, None
    with job.guard("litert_fp32"):
        fp32_bytes = _convert(PixelsNHWC(job.model, job.mean, job.std).eval(), job.image_size)
        _write(job, path, fp32_bytes, {"precision": "fp32"})
        entry = job.add(path, format="litert", precision="fp32", input=INPUT)
        fp32_outputs = job.verify(entry, _predictor(path, job), job.reference, fp32=True)
        _rewrite_measured(job, entry, path, fp32_bytes)
    for precision, wanted in (("fp16", job.settings.litert.fp16), ("int8", job.settings.litert.int8)):
        made = fp32_bytes is not None and fp32_outputs is not None
        if job.copy_of_fp32(f"litert_{precision}", wanted, made, "LiteRT"):
            with job.guard(f"litert_{precision}"):
                _quantized(job, precision, fp32_bytes, fp32_outputs)


def _quantized(job: ExportJob, precision: str, fp32_bytes: bytes, fp32_outputs: np.ndarray) -> None:
    """model_fp16.tflite or model_int8.tflite, run on the val images and compared with the fp32 model."""
    path = job.out_dir / FORMAT.file(precision)
    if precision == "fp16":
        model_bytes = _fp16(fp32_bytes)
        _write(job, path, model_bytes, {"precision": precision})
        entry = job.add(path, format="litert", precision=precision, quantization=FP16_RECIPE, input=INPUT)
    else:
        pixels, ranges, built = to_pixels(job.calibration, job.mean, job.std), {}, [b""]

        def build(layers: list[str]) -> Predict:
            built[0] = _int8(fp32_bytes, pixels, ranges, layers)
            _write(job, path, built[0], {"precision": precision})
            return _predictor(path, job)

        layers, search = keep_float_search(job, build, batch_size=1)
        model_bytes = built[0]
        entry = job.add(
            path,
            format="litert",
            precision=precision,
            quantization=INT8_RECIPE,
            calibration_images=len(pixels),
            input=INPUT,
            float_layers=layers,
            keep_float_search=search,
        )
    outputs = job.verify(entry, _predictor(path, job), job.reference)
    job.compare_with_fp32(f"litert_{precision}", entry, fp32_outputs, outputs)
    _rewrite_measured(job, entry, path, model_bytes)


def load(path: Path, manifest: dict[str, Any]) -> Predict:
    """An ai-edge-litert interpreter predictor, fed the manifest's normalization undone (raw pixels)."""
    prep = manifest["preprocess"]
    return litert_predictor(path, prep["mean"], prep["std"], torch.get_num_threads())


def litert_predictor(path: Path, mean: Sequence[float], std: Sequence[float], threads: int) -> Predict:
    """Run a .tflite image classifier with the LiteRT interpreter (CPU, XNNPACK) on normalized NCHW batches,
    one image at a time (the model has batch size 1, as on the phone)."""
    with native_output_to_log("the LiteRT interpreter"):
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


def _predictor(path: Path, job: ExportJob) -> Predict:
    return litert_predictor(path, job.mean, job.std, job.threads)


def _metadata(job: ExportJob, entry: dict[str, Any]) -> dict[str, Any]:
    """What the .tflite stores: classes, normalization, layout, and the artifact's own figures in `entry`
    (none until it is verified), never PyTorch's accuracy as its own."""
    model_metadata = {
        "classes": job.classes,
        "mean": list(job.mean),
        "std": list(job.std),
        "input": INPUT,
        "output": "float32 (1, classes) logits; apply softmax for probabilities",
        **{k: v for k, v in job.model_metadata.items() if k not in ("mean", "std")},
        "precision": entry["precision"],
    }
    return measured_metadata(model_metadata, entry, RUNTIME)


def _convert(module: nn.Module, image_size: int) -> bytes:
    """fp32 .tflite bytes of `module` for one (1, S, S, 3) image; litert-torch's progress lines are muted."""
    with _quiet("litert-torch"):
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
    with _quiet("ai-edge-quantizer"):
        return bytes(q.quantize().quantized_model)


def _layer_scope(layer: str) -> str:
    """The regex that finds a layer (module path in the classifier, e.g. features.1.conv.0.0) in
    litert-torch's op names, which spell each module as <class>_<name> under the wrapper's `model`."""
    parts = "/".join(rf"[^/;]*_{re.escape(part)}" for part in layer.split("."))
    return rf"_model/{parts}(;|$)"


def _int8(
    fp32_bytes: bytes, pixels: np.ndarray, ranges: dict[str, Any], float_layers: Sequence[str] = ()
) -> bytes:
    """Full-integer int8 copy, calibrated on NHWC `pixels` (the tensor ranges are kept in `ranges` for the
    next call), with float32 input and output kept and the `float_layers` (export.int8.keep_float) float.

    Each tensor's range is the min/max over all images (as TFLite's own converter calibrates): one
    `calibrate` call over all of them would smooth the ranges with a moving average (ai-edge-quantizer's
    default, not settable through `Quantizer`), which clipped the fine-tuned MobileNetV2's logits to about
    half their range. So every image is calibrated alone and the ranges are merged with `min_max_update`.
    """
    from ai_edge_quantizer import qtyping, quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.utils.qsv_utils import min_max_update

    if not len(pixels):
        raise ValueError("no readable calibration images for int8 quantization")
    q = quantizer.Quantizer(bytearray(fp32_bytes), recipe.static_wi8_ai8())
    (name, (input_name, _)) = next(iter(signature(fp32_bytes).items()))
    with _quiet("ai-edge-quantizer"):
        for image in pixels if not ranges else []:
            for tensor, qsv in q.calibrate({name: [{input_name: image[None]}]}).items():
                ranges[tensor] = min_max_update(ranges.get(tensor, {}), qsv)
        every_op = qtyping.TFLOperationName.ALL_SUPPORTED
        for layer in float_layers:
            scope = _layer_scope(layer)
            renamed = [rf"(^|;){re.escape(n)};" for n in renamed_outputs(fp32_bytes, scope)]  # the head
            for regex in [scope, *renamed]:
                q.update_quantization_recipe(regex, every_op, algorithm_key=AlgorithmName.NO_QUANTIZE)
        quantized = q.quantize(ranges).quantized_model
    return float_io(bytes(quantized))


@contextmanager
def _quiet(what: str) -> Iterator[None]:
    """The converters' progress bars, size reports, native logging and warnings into the log file (errors
    still raise)."""
    with native_output_to_log(what), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _write(job: ExportJob, path: Path, model_bytes: bytes, entry: dict[str, Any]) -> None:
    """The model with our JSON metadata, the standard TFLite Metadata and labels.txt packed in."""
    settings = job.settings
    standard = standard_metadata.build(
        name=f"{job.model_metadata.get('backbone', 'image')} classifier ({entry['precision']})",
        description=settings.description,
        version=str(settings.version),
        author=settings.author,
        license=settings.license,
        size=job.image_size,
    )
    with atomic_output(path) as tmp:
        model = with_metadata(model_bytes, _metadata(job, entry), standard)
        tmp.write_bytes(model + standard_metadata.labels_zip(job.classes))


def _rewrite_measured(job: ExportJob, entry: dict[str, Any], path: Path, model_bytes: bytes) -> None:
    """Write the verified model again with its figures in its metadata; its size and hash change."""
    _write(job, path, model_bytes, entry)
    entry.update(size_bytes=size_bytes(path), sha256=sha256(path))
