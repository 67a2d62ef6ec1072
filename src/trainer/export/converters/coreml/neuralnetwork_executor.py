"""Run a Core ML NeuralNetwork spec (.mlmodel) layer by layer in PyTorch, on any OS.

Core ML itself runs models only on macOS. Updatable models must be NeuralNetwork specs (not ML Programs), so
the only way to check on Linux that the shipped feature extractor computes what the PyTorch model computes is
to evaluate the layers the spec stores, with the weights it stores. This covers the layer types the PyTorch
converter emits for CNN backbones (convolution, batchnorm, activations, clip, add/multiply, pooling,
reshape/flatten, inner product, softmax, l2normalize); any other type raises `UnsupportedLayer` naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


class UnsupportedLayer(NotImplementedError):
    """The spec holds a layer type this executor does not evaluate."""


def _weights(params: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """A WeightParams message as a float32 tensor (fp32 values, or fp16 bytes)."""
    if len(params.floatValue):
        values = np.asarray(params.floatValue, np.float32)
    elif params.float16Value:
        values = np.frombuffer(params.float16Value, np.float16).astype(np.float32)
    else:
        raise UnsupportedLayer("quantized NeuralNetwork weights")
    return torch.from_numpy(values.copy()).reshape(shape)


def _padding(
    valid_or_same: Any, which: str, kernel: list[int], stride: list[int], size: list[int]
) -> list[int]:
    """F.pad amounts (left, right, top, bottom) for a `valid` (explicit) or `same` padding message."""
    if which == "valid":
        amounts = valid_or_same.paddingAmounts.borderAmounts
        (top, bottom), (left, right) = (
            ((a.startEdgeSize, a.endEdgeSize) for a in amounts) if amounts else ((0, 0), (0, 0))
        )
        return [left, right, top, bottom]
    pads = []
    for k, s, n in zip(kernel, stride, size, strict=True):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        before = total // 2 if valid_or_same.asymmetryMode == 0 else total - total // 2
        pads.append((before, total - before))
    (top, bottom), (left, right) = pads
    return [left, right, top, bottom]


def _convolution(layer: Any, x: torch.Tensor) -> torch.Tensor:
    p = layer.convolution
    if p.isDeconvolution:
        raise UnsupportedLayer("deconvolution")
    kernel, stride = list(p.kernelSize), list(p.stride)
    weight = _weights(p.weights, (p.outputChannels, p.kernelChannels, *kernel))
    bias = _weights(p.bias, (p.outputChannels,)) if p.hasBias else None
    which = p.WhichOneof("ConvolutionPaddingType")
    x = F.pad(x, _padding(getattr(p, which), which, kernel, stride, list(x.shape[2:])))
    return F.conv2d(x, weight, bias, stride=stride, dilation=list(p.dilationFactor), groups=p.nGroups)


def _batchnorm(layer: Any, x: torch.Tensor) -> torch.Tensor:
    p, c = layer.batchnorm, layer.batchnorm.channels
    if p.computeMeanVar:
        raise UnsupportedLayer("batchnorm with computeMeanVar")
    gamma, beta = _weights(p.gamma, (c,)), _weights(p.beta, (c,))
    mean, var = _weights(p.mean, (c,)), _weights(p.variance, (c,))
    return F.batch_norm(x, mean, var, gamma, beta, training=False, eps=p.epsilon)


def _activation(layer: Any, x: torch.Tensor) -> torch.Tensor:
    p = layer.activation
    kind = p.WhichOneof("NonlinearityType")
    if kind == "ReLU":
        return F.relu(x)
    if kind == "sigmoid":
        return torch.sigmoid(x)
    if kind == "tanh":
        return torch.tanh(x)
    if kind == "leakyReLU":
        return F.leaky_relu(x, p.leakyReLU.alpha)
    if kind == "linear":
        return p.linear.alpha * x + p.linear.beta
    if kind == "sigmoidHard":
        return torch.clamp(p.sigmoidHard.alpha * x + p.sigmoidHard.beta, 0.0, 1.0)
    raise UnsupportedLayer(f"activation {kind}")


def _pooling(layer: Any, x: torch.Tensor) -> torch.Tensor:
    p = layer.pooling
    average = p.type == p.AVERAGE
    if p.type not in (p.AVERAGE, p.MAX):
        raise UnsupportedLayer("L2 pooling")
    if p.globalPooling:
        return x.mean((2, 3), keepdim=True) if average else x.amax((2, 3), keepdim=True)
    kernel, stride = list(p.kernelSize), list(p.stride)
    which = p.WhichOneof("PoolingPaddingType")
    if which == "includeLastPixel":
        raise UnsupportedLayer("pooling with includeLastPixel padding")
    pads = _padding(getattr(p, which), which, kernel, stride, list(x.shape[2:]))
    if not average:
        return F.max_pool2d(F.pad(x, pads, value=float("-inf")), kernel, stride)
    summed = F.avg_pool2d(F.pad(x, pads), kernel, stride, divisor_override=1)
    if not p.avgPoolExcludePadding:
        return summed / (kernel[0] * kernel[1])
    counts = F.avg_pool2d(F.pad(torch.ones_like(x[:1, :1]), pads), kernel, stride, divisor_override=1)
    return summed / counts


def _inner_product(layer: Any, x: torch.Tensor) -> torch.Tensor:
    p = layer.innerProduct
    weight = _weights(p.weights, (p.outputChannels, p.inputChannels))
    bias = _weights(p.bias, (p.outputChannels,)) if p.hasBias else None
    out = F.linear(x.reshape(x.shape[0], -1), weight, bias)
    return out.reshape(out.shape[0], -1, *([1] * (x.dim() - 2)))


def _reshape_static(layer: Any, x: torch.Tensor) -> torch.Tensor:
    """Core ML runs one image at a time: a leading 1 in the target is that batch, here the rows of `x`."""
    target = list(layer.reshapeStatic.targetShape)
    return x.reshape(x.shape[0], *(target[1:] if len(target) > 1 and target[0] == 1 else target))


_ELEMENTWISE: dict[str, Callable[[Any, torch.Tensor], torch.Tensor]] = {
    "convolution": _convolution,
    "batchnorm": _batchnorm,
    "activation": _activation,
    "pooling": _pooling,
    "innerProduct": _inner_product,
    "reshapeStatic": _reshape_static,
    "clip": lambda layer, x: torch.clamp(x, layer.clip.minVal, layer.clip.maxVal),
    "flatten": lambda layer, x: x.reshape(x.shape[0], -1, 1, 1),
    "flattenTo2D": lambda layer, x: x.reshape(x.shape[0], -1),
    "softmax": lambda layer, x: torch.softmax(x, dim=1),
    "l2normalize": lambda layer, x: (
        x / torch.sqrt((x**2).sum(tuple(range(1, x.dim())), keepdim=True) + layer.l2normalize.epsilon)
    ),
}


def _combine(layer: Any, inputs: list[torch.Tensor]) -> torch.Tensor:
    """add / multiply layers: the sum or product of all inputs, times or plus the layer's scalar `alpha`."""
    kind = layer.WhichOneof("layer")
    out = inputs[0]
    for other in inputs[1:]:
        out = out + other if kind == "add" else out * other
    if len(inputs) == 1:
        alpha = getattr(layer, kind).alpha
        out = out + alpha if kind == "add" else out * alpha
    return out


def preprocess(network: Any, input_name: str, pixels: np.ndarray) -> torch.Tensor:
    """What Core ML feeds the first layer for raw (N, 3, H, W) RGB pixels: channelScale * pixel + bias[c]."""
    x = torch.from_numpy(np.asarray(pixels, np.float32))
    for step in network.preprocessing:
        if step.featureName != input_name:
            continue
        if step.WhichOneof("preprocessor") != "scaler":
            raise UnsupportedLayer("mean-image preprocessing")
        s = step.scaler
        bias = torch.tensor([s.redBias, s.greenBias, s.blueBias], dtype=torch.float32).view(1, 3, 1, 1)
        x = x * (s.channelScale or 1.0) + bias
    return x


def run_network(network: Any, inputs: dict[str, np.ndarray | torch.Tensor]) -> dict[str, np.ndarray]:
    """Every blob the NeuralNetwork message `network` computes from `inputs` (image inputs preprocessed)."""
    blobs: dict[str, torch.Tensor] = {
        name: value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value, np.float32))
        for name, value in inputs.items()
    }
    with torch.inference_mode():
        for layer in network.layers:
            kind = layer.WhichOneof("layer")
            args = [blobs[name] for name in layer.input]
            if kind in ("add", "multiply"):
                out = _combine(layer, args)
            elif kind in _ELEMENTWISE:
                out = _ELEMENTWISE[kind](layer, args[0])
            else:
                raise UnsupportedLayer(f"layer type '{kind}' ({layer.name})")
            blobs[layer.output[0]] = out
    return {name: value.numpy() for name, value in blobs.items()}


def layer_types(network: Any) -> list[str]:
    """The distinct layer types of a NeuralNetwork message, in first-use order."""
    return list(dict.fromkeys(layer.WhichOneof("layer") for layer in network.layers))


def unsupported_layers(network: Any) -> list[str]:
    """Layer types of `network` that `run_network` cannot evaluate (empty: it runs them all)."""
    return [t for t in layer_types(network) if t not in _ELEMENTWISE and t not in ("add", "multiply")]
