"""Per-layer int8 sensitivity: how much each weighted layer alone, quantized, moves the model's answers.

One ranking serves every int8 format (ONNX, ExecuTorch): each Conv2d / Linear layer in turn gets int8
weights (symmetric, per output channel, as every format here quantizes them) and an 8-bit input (asymmetric,
min/max over the calibration images), every other layer stays float, and the held-out images are run in
PyTorch. The score is the mean KL divergence of that model's class probabilities from fp32's: the standard
one-layer-at-a-time sensitivity analysis (as in NVIDIA's pytorch-quantization and AIMET), which isolates a
layer's own noise, where comparing activations of the fully quantized model (onnxruntime's qdq_loss_debug,
torchao's numeric debugger) sees the noise of every layer upstream accumulated.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainer.export.verify import run_batches, torch_predictor

WEIGHTED = (nn.Conv2d, nn.Linear)
# held-out images each layer is scored on (MobileNetV2, 53 layers x 32 images at 128 px: ~15 s on one core)
RANKING_IMAGES = 32


def kl_divergence(reference: np.ndarray, outputs: np.ndarray) -> float:
    """Mean KL(softmax(reference) || softmax(outputs)) over the rows."""
    log_p = torch.log_softmax(torch.from_numpy(reference).double(), 1)
    log_q = torch.log_softmax(torch.from_numpy(outputs).double(), 1)
    return float((log_p.exp() * (log_p - log_q)).sum(1).mean())


@dataclass(frozen=True)
class LayerScore:
    name: str  # module path in the model, as torch.export's nn_module_stack names it
    kl: float  # mean KL(fp32 || only this layer int8) over the held-out images


def weighted_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The model's Conv2d / Linear module names in the order the forward pass runs them (the order of the
    weighted nodes in an exported graph)."""
    order: list[str] = []
    names = {module: name for name, module in model.named_modules() if isinstance(module, WEIGHTED)}
    hooks = [m.register_forward_pre_hook(lambda m, _: order.append(names[m])) for m in names]
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return list(dict.fromkeys(order))


def _input_ranges(model: nn.Module, layers: list[str], images: np.ndarray) -> dict[str, tuple[float, float]]:
    """min/max of each layer's input over the calibration images."""
    modules = dict(model.named_modules())
    ranges: dict[str, tuple[float, float]] = {}

    def record(name: str):
        def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            low, high = ranges.get(name, (0.0, 0.0))
            ranges[name] = (min(low, float(args[0].min())), max(high, float(args[0].max())))

        return hook

    hooks = [modules[name].register_forward_pre_hook(record(name)) for name in layers]
    try:
        _logits(model, images)
    finally:
        for hook in hooks:
            hook.remove()
    return ranges


def _fake_int8_weight(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-channel int8 quantize-dequantize."""
    scale = weight.abs().flatten(1).amax(1).clamp(min=1e-12) / 127.0
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -127, 127)


@contextmanager
def _only_int8(module: nn.Module, low: float, high: float) -> Iterator[None]:
    """`module` with int8 weights and an 8-bit input for the duration."""
    scale = max(high - low, 1e-8) / 255.0
    zero_point = int(round(-low / scale))

    def quantize_input(_: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (torch.fake_quantize_per_tensor_affine(args[0], scale, zero_point, 0, 255), *args[1:])

    weight = module.weight.data
    module.weight.data = _fake_int8_weight(weight)
    hook = module.register_forward_pre_hook(quantize_input)
    try:
        yield
    finally:
        hook.remove()
        module.weight.data = weight


def _logits(model: nn.Module, images: np.ndarray) -> np.ndarray:
    return run_batches(torch_predictor(model), images, batch_size=32)


def rank_layers(
    model: nn.Module, calibration: np.ndarray, holdout: np.ndarray, reference: np.ndarray | None = None
) -> list[LayerScore]:
    """Every weighted layer's sensitivity, most sensitive first; `reference`: the model's logits on
    `holdout` when the caller has them."""
    layers = weighted_layers(model, torch.from_numpy(holdout[:1]))
    ranges = _input_ranges(model, layers, calibration)
    reference = _logits(model, holdout) if reference is None else reference
    modules = dict(model.named_modules())
    scores = []
    for name in layers:
        with _only_int8(modules[name], *ranges[name]):
            scores.append(LayerScore(name, kl_divergence(reference, _logits(model, holdout))))
    return sorted(scores, key=lambda s: -s.kl)
