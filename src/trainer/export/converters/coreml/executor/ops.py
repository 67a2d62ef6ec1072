"""Torch kernels for the MIL ops that converted classifiers contain, with MIL's defaults and semantics.

Each kernel takes the op's inputs by their MIL names: tensors for values computed at run time, and Python
values or tensors for constants. Semantics follow coremltools' op definitions (`mil/ops/defs/iOS15`): conv and
pooling padding (`pad_type` valid / same / same_lower / custom, `pad` as [before, after] per spatial axis),
`sigmoid_hard` = min(max(alpha * x + beta, 0), 1), `thresholded_relu` = x where x >= alpha else 0,
`batch_norm` = gamma * (x - mean) / sqrt(variance + epsilon) + beta, `quantize` = clip(round(x / scale) +
zero_point) to int8 / uint8 (iOS17: W8A8 activations; integers kept in float tensors) and `dequantize` =
(x - zero_point) * scale. Rounding to fp16 is the executor's job.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

Kernel = Callable[..., Any]
DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "int32": torch.int32, "bool": torch.bool}


def _spatial_pad(
    x: torch.Tensor,
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pad_type: str,
    pad: Sequence[int] | None,
) -> list[int]:
    """[before0, after0, before1, after1, ...] padding of the spatial axes, as MIL defines each pad_type."""
    if pad_type == "valid":
        return [0] * (2 * len(kernel))
    if pad_type == "custom":
        return [int(p) for p in pad] if pad is not None else [0] * (2 * len(kernel))
    if pad_type not in ("same", "same_lower"):
        raise ValueError(f"unknown pad_type '{pad_type}' (valid, same, same_lower, custom)")
    pads = []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations, strict=True):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        pads += [small, large] if pad_type == "same" else [large, small]
    return pads


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """MIL's [before, after] per axis, first axis first, as F.pad's order (last axis first)."""
    pairs = [pads[i : i + 2] for i in range(0, len(pads), 2)]
    return [p for pair in reversed(pairs) for p in pair]


def conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    strides: Sequence[int] | None = None,
    pad_type: str = "valid",
    pad: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    groups: int = 1,
) -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError(f"conv: only 2-D convolutions are supported, got input rank {x.dim()}")
    strides = tuple(strides or (1, 1))
    dilations = tuple(dilations or (1, 1))
    pads = _spatial_pad(x, weight.shape[2:], strides, dilations, pad_type, pad)
    if pads[0::2] == pads[1::2]:
        return F.conv2d(x, weight, bias, strides, tuple(pads[0::2]), dilations, groups)
    return F.conv2d(F.pad(x, _torch_pad(pads)), weight, bias, strides, 0, dilations, groups)


def _pool(
    x: torch.Tensor,
    kernel_sizes: Sequence[int],
    strides: Sequence[int] | None,
    pad_type: str,
    pad: Sequence[int] | None,
) -> tuple[list[int], tuple[int, ...], bool]:
    """Padding, strides, and whether torch's own symmetric padding can do it (else the input is pre-padded).

    torch's ceil_mode drops a last window that starts in the right padding, as MIL's shape rule does, so the
    native path keeps ceil_mode exact; the executor checks every output shape against the program's anyway.
    """
    if x.dim() != 4:
        raise ValueError(f"pooling: only 2-D pooling is supported, got input rank {x.dim()}")
    strides = tuple(strides or (1, 1))
    pads = _spatial_pad(x, kernel_sizes, strides, (1, 1), pad_type, pad)
    native = pads[0::2] == pads[1::2] and all(
        p <= k // 2 for p, k in zip(pads[0::2], kernel_sizes, strict=True)
    )
    return pads, strides, native


def max_pool(
    x: torch.Tensor,
    kernel_sizes: Sequence[int],
    strides: Sequence[int] | None = None,
    pad_type: str = "valid",
    pad: Sequence[int] | None = None,
    ceil_mode: bool = False,
) -> torch.Tensor:
    pads, strides, native = _pool(x, kernel_sizes, strides, pad_type, pad)
    if native:
        return F.max_pool2d(x, tuple(kernel_sizes), strides, tuple(pads[0::2]), ceil_mode=bool(ceil_mode))
    padded = F.pad(x, _torch_pad(pads), value=-math.inf)
    return F.max_pool2d(padded, tuple(kernel_sizes), strides, 0, ceil_mode=bool(ceil_mode))


def avg_pool(
    x: torch.Tensor,
    kernel_sizes: Sequence[int],
    strides: Sequence[int] | None = None,
    pad_type: str = "valid",
    pad: Sequence[int] | None = None,
    exclude_padding_from_average: bool = False,
    ceil_mode: bool = False,
) -> torch.Tensor:
    pads, strides, native = _pool(x, kernel_sizes, strides, pad_type, pad)
    kernel, ceil = tuple(kernel_sizes), bool(ceil_mode)
    if native:
        return F.avg_pool2d(
            x, kernel, strides, tuple(pads[0::2]), ceil, count_include_pad=not exclude_padding_from_average
        )
    total = F.avg_pool2d(F.pad(x, _torch_pad(pads)), kernel, strides, 0, ceil)
    if not exclude_padding_from_average:
        return total
    inside = F.avg_pool2d(F.pad(torch.ones_like(x[:1, :1]), _torch_pad(pads)), kernel, strides, 0, ceil)
    return total / inside


def batch_norm(
    x: torch.Tensor,
    mean: torch.Tensor,
    variance: torch.Tensor,
    gamma: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    epsilon: float = 1e-5,
) -> torch.Tensor:
    return F.batch_norm(x, mean, variance, gamma, beta, training=False, eps=float(epsilon))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def clip(x: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    return x.clamp(float(alpha), float(beta))


def sigmoid_hard(x: torch.Tensor, alpha: float = 0.2, beta: float = 0.5) -> torch.Tensor:
    return (x * float(alpha) + float(beta)).clamp(0.0, 1.0)


def thresholded_relu(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    return torch.where(x >= float(alpha), x, torch.zeros_like(x))


def reduce_mean(x: torch.Tensor, axes: Sequence[int] | None = None, keep_dims: bool = False) -> torch.Tensor:
    dims = tuple(axes) if axes is not None else tuple(range(x.dim()))
    return x.mean(dim=dims, keepdim=bool(keep_dims))


def concat(values: Sequence[torch.Tensor], axis: int, interleave: bool = False) -> torch.Tensor:
    if interleave:
        raise ValueError("concat: interleave=True is not supported")
    return torch.cat(list(values), dim=int(axis))


def cast(x: torch.Tensor, dtype: str) -> torch.Tensor:
    if dtype not in DTYPES:
        raise ValueError(f"cast: unsupported dtype '{dtype}' (supported: {sorted(DTYPES)})")
    return x.to(DTYPES[dtype])


def reshape(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    return x.reshape(tuple(shape))


def softmax(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    return torch.softmax(x, dim=int(axis))


def classify(probabilities: torch.Tensor, classes: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """Most likely label per row, and the probabilities (columns in `classes` order) for the dict output."""
    labels = [classes[i] for i in probabilities.argmax(dim=-1).tolist()]
    return labels, probabilities


INTEGER_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}


def _along(value: Any, axis: int | None, rank: int) -> torch.Tensor:
    """A quantization scale or zero point, scalar or one per element of `axis`, shaped to broadcast."""
    tensor = torch.as_tensor(value, dtype=torch.float32)
    if tensor.dim() == 0:
        return tensor
    shape = [1] * rank
    shape[axis if axis is not None else 0] = -1
    return tensor.reshape(shape)


def quantize(
    input: torch.Tensor, scale: Any, output_dtype: str, zero_point: Any = 0, axis: int | None = None
) -> torch.Tensor:
    if output_dtype not in INTEGER_RANGES:
        raise ValueError(f"quantize: unsupported output_dtype '{output_dtype}' (int8, uint8)")
    low, high = INTEGER_RANGES[output_dtype]
    rank = input.dim()
    q = torch.round(input.float() / _along(scale, axis, rank)) + _along(zero_point, axis, rank)
    return q.clamp(low, high)


def dequantize(input: torch.Tensor, scale: Any, zero_point: Any = 0, axis: int | None = None) -> torch.Tensor:
    rank = input.dim()
    return (input - _along(zero_point, axis, rank)) * _along(scale, axis, rank)


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Kernel:
    return lambda x: fn(x)


def _binary(fn: Callable[[Any, Any], torch.Tensor]) -> Kernel:
    """Elementwise with numpy-style broadcasting, as MIL's elementwise binary ops."""
    return lambda x, y: fn(x, y)


KERNELS: dict[str, Kernel] = {
    "add": _binary(operator.add),
    "mul": _binary(operator.mul),
    "sub": _binary(operator.sub),
    "real_div": _binary(operator.truediv),
    "relu": _unary(torch.relu),
    "sigmoid": _unary(torch.sigmoid),
    "silu": _unary(F.silu),
    "conv": conv,
    "linear": linear,
    "batch_norm": batch_norm,
    "clip": clip,
    "sigmoid_hard": sigmoid_hard,
    "thresholded_relu": thresholded_relu,
    "max_pool": max_pool,
    "avg_pool": avg_pool,
    "reduce_mean": reduce_mean,
    "concat": concat,
    "cast": cast,
    "reshape": reshape,
    "softmax": softmax,
    "classify": classify,
    "quantize": quantize,
    "dequantize": dequantize,
}
