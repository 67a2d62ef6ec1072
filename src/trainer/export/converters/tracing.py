"""Tracing to TorchScript, shared by the formats that start from a traced graph: the TorchScript files, the
Core ML converter and the updatable model's feature extractor."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def jit_without_deprecation() -> Iterator[None]:
    """Silence torch's FutureWarning that torch.jit is deprecated: TorchScript is still the input coremltools
    and PyTorch Mobile take, and the artifact apps and trainer-predict load."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* deprecated", category=FutureWarning)
        yield


def trace(module: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """Trace `module` in eval mode without autograd."""
    module.eval()
    with torch.no_grad(), jit_without_deprecation():
        return torch.jit.trace(module, example)
