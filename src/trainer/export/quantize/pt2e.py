"""PT2E int8 for ExecuTorch's XNNPACK delegate: post-training (calibrated, some layers optionally left float)
or quantization-aware (a short fine-tune of the fake-quantized model towards the fp32 model's answers).

Layers are left float through XNNPACKQuantizer.set_filter_function (its `set_module_name(name, None)` is
not supported yet: the quantizer asserts): float weights and compute; their input keeps the quantization of
the layer in front's output, since XNNPACK runs that layer as a quantized conv only with a quantized output
(rewired to the float tensor, the .pte lowering failed: "Missing out variants: dequantize_per_channel").
QAT follows PyTorch's PT2E QAT flow (prepare_qat_pt2e, train, convert_pt2e) with BatchNorm frozen at its
running statistics (move_exported_model_to_eval) and folded into the convolutions at convert.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.export.quantize.distill import distill
from trainer.export.quantize.settings import QatSettings

log = logging.getLogger(__name__)


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
    _calibrate(prepared, calibration)
    return convert_pt2e(prepared)


def qat(
    model: nn.Module, calibration: np.ndarray, images: np.ndarray, settings: QatSettings
) -> tuple[nn.Module, dict[str, Any]]:
    """Quantization-aware fine-tune: the fake-quantized copy, its ranges first calibrated as PTQ's are,
    learns the fp32 model's answers (distill.py); returns the converted int8 module and a record of the run
    for the manifest."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    started = time.perf_counter()
    example = (torch.from_numpy(images[:2]),)
    trained = copy.deepcopy(model)  # the exported module shares its parameters, which training changes
    dynamic = ({0: torch.export.Dim("batch")},)
    exported = torch.export.export(trained, example, dynamic_shapes=dynamic).module()
    prepared = prepare_qat_pt2e(exported, _quantizer((), True))
    move_exported_model_to_eval(prepared)  # BatchNorm frozen; the fake quantizers still learn
    _calibrate(prepared, calibration)
    record = distill(prepared, model, images, settings)
    record["seconds"] = round(time.perf_counter() - started, 1)
    log.info("export: quantization-aware fine-tune, %d steps in %.0f s", settings.steps, record["seconds"])
    return convert_pt2e(prepared), record
