"""Model size and compute, counted the way the MobileNet paper reports them.

The paper counts parameters and multiply-adds of convolutions and fully-connected layers only (no BN,
activations, pooling or bias adds); torch's FlopCounterMode counts exactly those ops, at 2 FLOPs per
multiply-add.
"""

import copy

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs", "count_params"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, image_size: int, channels: int = 3) -> int:
    """Multiply-adds of one forward pass on a single square image.

    Runs a deep copy in eval mode so the caller's model keeps its mode, device and BN statistics.
    """
    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    probe = copy.deepcopy(model).eval()
    image = torch.zeros(1, channels, image_size, image_size, device=device, dtype=dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        probe(image)
    return counter.get_total_flops() // 2
