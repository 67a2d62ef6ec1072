"""The learning-rate schedule the `optim` configs name (`optim.scheduler._target_`): linear warmup, then
cosine decay, stepped once per optimizer step."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    epochs: int,
    warmup_epochs: float,
    warmup_start_factor: float,
    min_lr_ratio: float,
) -> LRScheduler:
    """Warm up linearly from `warmup_start_factor` x lr over `warmup_epochs`, then follow a cosine down to
    `min_lr_ratio` x the optimizer's lr (the head's; every group ends at that same floor).

    `total_steps` is the run's optimizer steps and `epochs` its epochs, so a fractional warmup (0.25) is a
    quarter of one epoch's steps.
    """
    total = max(1, int(total_steps))
    warmup = min(total - 1, int(round(float(warmup_epochs) * total / max(1, int(epochs)))))
    floor = float(optimizer.defaults["lr"]) * float(min_lr_ratio)
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total - warmup), eta_min=floor)
    if warmup <= 0:
        return cosine
    start = LinearLR(optimizer, start_factor=float(warmup_start_factor), total_iters=warmup)
    return SequentialLR(optimizer, [start, cosine], milestones=[warmup])
