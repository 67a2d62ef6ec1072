"""Core ML W8A8 (int8 weights and activations, iOS17+), calibrated in PyTorch: coremltools.optimize.torch's
LinearQuantizer prepares and calibrates the model, ct.convert (convert.py) writes its quantize/dequantize
pairs into the program, so no MLModel.predict (macOS) is needed."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.export.quantize.distill import distill
from trainer.export.quantize.settings import QatSettings


def _quantizable(model: nn.Module) -> nn.Module:
    """A copy of `model` that the quantizer traces in train mode (where it fuses Conv-BatchNorm pairs) as it
    runs in eval mode: dropout and stochastic depth (timm's DropPath) off, and each BatchNorm subclass that
    also applies its activation (timm's BatchNormAct2d, whose own forward would be traced computing batch
    statistics) split into torch's BatchNorm2d followed by that activation."""
    copied = copy.deepcopy(model)
    for parent in list(copied.modules()):
        for name, module in parent.named_children():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.p = 0.0
            if hasattr(module, "drop_prob"):
                module.drop_prob = 0.0
            if isinstance(module, nn.BatchNorm2d) and type(module) is not nn.BatchNorm2d:
                plain = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine)
                plain.load_state_dict(module.state_dict(), strict=False)
                setattr(parent, name, nn.Sequential(plain, getattr(module, "act", nn.Identity())))
    return copied.train()


def w8a8_module(
    model: nn.Module,
    calibration: np.ndarray,
    qat: QatSettings | None = None,
    images: np.ndarray | None = None,
    float_layers: Sequence[str] = (),
) -> tuple[nn.Module, dict[str, Any] | None]:
    """`model` with int8 weights (per channel) and int8 activations (per tensor, min/max over the normalized
    `calibration` images), as coremltools.optimize.torch's LinearQuantizer makes it: ct.convert turns its
    quantize/dequantize pairs into an iOS17 W8A8 program. Calibrated in PyTorch, so no MLModel.predict
    (macOS) is needed, unlike coremltools.optimize.coreml.linear_quantize_activations. Prepared from train
    mode so that each Conv-BatchNorm pair is fused and quantized as one (folded weights, the activation after
    BatchNorm): from eval mode BatchNorm stayed apart and the conv's raw output was quantized (MobileNetV2 on
    hymenoptera: KL from fp32 0.0096 and 95.4% agreement, against 0.0012 and 100% fused).

    With `qat` (export.int8.method=qat) the calibrated copy then learns the fp32 model's answers on `images`
    with fake quantization on (distill.py), and its quantizers keep the ranges it trained with; returns the
    module and that run's record (None without QAT). The modules named in `float_layers` stay float
    (export.int8.keep_float)."""
    from coremltools.optimize.torch.quantization import LinearQuantizer, LinearQuantizerConfig

    # LinearQuantizer milestones (steps; -1: never): observers on and BatchNorm frozen at step 0, fake
    # quantization from step 1 (after calibration) for QAT only
    milestones = [0, 1 if qat else -1, -1, 0]
    config = {"quantization_scheme": "affine", "activation_observer": "min_max", "weight_observer": "min_max"}
    config = LinearQuantizerConfig.from_dict(
        {
            "global_config": {**config, "milestones": milestones},
            "module_name_configs": dict.fromkeys(float_layers),
        }
    )
    quantizer = LinearQuantizer(_quantizable(model), config)
    prepared = quantizer.prepare(example_inputs=(torch.from_numpy(calibration[:1]),), inplace=True)
    quantizer.step()
    prepared.eval()  # BatchNorm at its running statistics; the observers still record
    with torch.no_grad():
        for start in range(0, len(calibration), 16):
            prepared(torch.from_numpy(calibration[start : start + 16]))
    record = None
    if qat is not None and images is not None:
        quantizer.step()
        record = distill(prepared, model, images, qat)
        prepared.apply(torch.ao.quantization.disable_observer)  # ranges fixed: tracing runs it twice
    return quantizer.finalize(inplace=True).eval(), record
