"""How training runs fast on the hardware at hand: memory format and numeric precision, `auto` by default.

`memory_format=auto` trains in channels_last on CPUs and CUDA GPUs (oneDNN and cuDNN convolutions run faster
in NHWC), contiguous elsewhere (Apple's MPS). `trainer.precision=auto` is bf16 autocast on CPUs with native
bf16 instructions (AVX512-BF16, AMX, Arm BF16), bf16 mixed precision on GPUs that have it and fp16 mixed on
the others, fp32 on everything else. Weights stay fp32 either way; export always gets an fp32 NCHW model.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX-512/AMX, aarch64


def accelerator_of(trainer_cfg: Any) -> str:
    """`cpu`, `gpu` or `mps`: the Trainer's accelerator with `auto`/`cuda` resolved."""
    name = str(trainer_cfg.get("accelerator", "cpu"))
    if name == "auto":
        if torch.cuda.is_available():
            return "gpu"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    return "gpu" if name == "cuda" else name


@functools.cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU computes bf16 in hardware; emulated bf16 (AVX-512F, AVX2) is slower than fp32."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:  # not Linux: no cheap, reliable way to tell, so stay in fp32
        return False
    lines = [line for line in text.splitlines() if line.startswith(("flags", "Features"))]
    flags = lines[0].split(":", 1)[1].split() if lines else []
    return bool(NATIVE_BF16_FLAGS.intersection(flags))


def resolve_precision(trainer_cfg: Any) -> str:
    """The Lightning precision string for `trainer.precision` (`auto` decided by the hardware)."""
    value = str(trainer_cfg.get("precision", "auto"))
    if value != "auto":
        return value
    accelerator = accelerator_of(trainer_cfg)
    if accelerator == "gpu":
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator == "cpu" and cpu_has_native_bf16():
        return "bf16-mixed"
    return "32-true"


def resolve_memory_format(value: Any, trainer_cfg: Any) -> torch.memory_format:
    """`memory_format` setting -> torch memory format (`auto`: channels_last on CPU and CUDA)."""
    value = str(value or "auto")
    if value == "auto":
        value = "channels_last" if accelerator_of(trainer_cfg) in ("cpu", "gpu") else "contiguous"
    if value not in MEMORY_FORMATS:
        raise ValueError(
            f"memory_format={value!r} is unknown; use auto, {' or '.join(MEMORY_FORMATS)} "
            "(contiguous = PyTorch's default NCHW)"
        )
    return MEMORY_FORMATS[value]
