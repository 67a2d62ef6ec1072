"""PT2E int8 for ExecuTorch's XNNPACK delegate: post-training (calibrated, some layers optionally left float)
or quantization-aware (a short fine-tune of the fake-quantized model towards the fp32 model's answers).

Layers are left float through XNNPACKQuantizer.set_filter_function (its `set_module_name(name, None)` is
not supported yet: the quantizer asserts), and read the float tensor before the observer the layer in front
put on its output (else they would keep the input noise that made them sensitive).
QAT follows PyTorch's PT2E QAT flow (prepare_qat_pt2e, train, convert_pt2e) with BatchNorm frozen at its
running statistics (move_exported_model_to_eval) and folded into the convolutions at convert.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.export.settings import QatSettings

log = logging.getLogger(__name__)


WEIGHTED_OPS = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)
ACTIVATIONS = tuple(getattr(torch.ops.aten, op).default for op in ("relu", "relu_", "hardtanh", "hardtanh_"))


def _float_inputs(prepared: torch.fx.GraphModule, float_layers: Sequence[str]) -> None:
    """Rewire each float layer's input past the observer (a call_module) that quantizes it, and so on up
    through a ReLU / ReLU6 to the layer in front (an activation shares its input's quantization)."""
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

    in_float = [get_module_name_filter(name) for name in float_layers]
    for node in prepared.graph.nodes:
        current = node if node.target in WEIGHTED_OPS and any(f(node) for f in in_float) else None
        while current is not None and getattr(current.args[0], "op", None) == "call_module":
            observer = current.args[0]
            current.replace_input_with(observer, observer.args[0])
            upstream = current.args[0]
            current = upstream if getattr(upstream, "target", None) in ACTIVATIONS else None
    prepared.recompile()


def _quantizer(float_layers: Sequence[str], qat: bool) -> Any:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))
    if float_layers:
        in_float = [get_module_name_filter(name) for name in float_layers]
        quantizer.set_filter_function(lambda node: not any(f(node) for f in in_float))
    return quantizer


def _calibrate(prepared: nn.Module, calibration: np.ndarray) -> None:
    if not len(calibration):
        raise ValueError("no readable calibration images for int8 quantization")
    with torch.no_grad():
        for image in calibration:
            prepared(torch.from_numpy(image[None]))


def ptq(
    model: nn.Module, example: tuple[torch.Tensor], calibration: np.ndarray, float_layers: Sequence[str] = ()
) -> nn.Module:
    """PT2E post-training int8 (XNNPACK, per-channel symmetric), calibrated one image at a time, with the
    `float_layers` (module names) left in float."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(torch.export.export(model, example).module(), _quantizer(float_layers, False))
    _float_inputs(prepared, float_layers)
    _calibrate(prepared, calibration)
    return convert_pt2e(prepared)


def qat(
    model: nn.Module, calibration: np.ndarray, images: np.ndarray, settings: QatSettings
) -> tuple[nn.Module, dict[str, Any]]:
    """Quantization-aware fine-tune: the fake-quantized copy, its ranges first calibrated as PTQ's are,
    learns the fp32 model's class probabilities (KL) on `images` for settings.steps Adam steps; returns the
    converted int8 module and a record of the run for the manifest."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    started = time.perf_counter()
    batch = torch.export.Dim("batch")
    example = (torch.from_numpy(images[:2]),)
    exported = torch.export.export(model, example, dynamic_shapes=({0: batch},)).module()
    prepared = prepare_qat_pt2e(exported, _quantizer((), True))
    move_exported_model_to_eval(prepared)  # BatchNorm frozen; the fake quantizers still learn
    _calibrate(prepared, calibration)
    with torch.no_grad():
        teacher = torch.cat([model(torch.from_numpy(images[i : i + 32])) for i in range(0, len(images), 32)])
    teacher = torch.log_softmax(teacher, 1)
    optimizer = torch.optim.Adam([p for p in prepared.parameters() if p.requires_grad], lr=settings.lr)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(settings.steps):
        rows = torch.randint(len(images), (min(settings.batch_size, len(images)),), generator=generator)
        student = torch.log_softmax(prepared(torch.from_numpy(images[rows.numpy()])), 1)
        loss = nn.functional.kl_div(student, teacher[rows], log_target=True, reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - started
    log.info("export: quantization-aware fine-tune, %d steps in %.0f s", settings.steps, seconds)
    record = {
        "method": "qat",
        "steps": settings.steps,
        "lr": settings.lr,
        "batch_size": settings.batch_size,
        "images": len(images),
        "kl_first_steps": round(float(np.mean(losses[:10])), 6),
        "kl_last_steps": round(float(np.mean(losses[-10:])), 6),
        "seconds": round(seconds, 1),
    }
    return convert_pt2e(prepared), record
