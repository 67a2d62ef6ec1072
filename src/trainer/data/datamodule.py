"""LightningDataModule over a `DatasetIndex`: images decoded in worker processes, never starving the model."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer.data.data_config import DataConfig
from trainer.data.images import load_rgb
from trainer.data.index import DatasetIndex, Sample
from trainer.data.transforms import eval_transform, train_transform


class ImageListDataset(Dataset):
    """(path, label) samples -> (tensor, label); JPEGs are decoded at reduced scale where it loses nothing."""

    def __init__(self, samples: list[Sample], transform: Callable, min_side: int | None = None) -> None:
        self.samples = samples
        self.transform = transform
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        try:
            image = load_rgb(path, self.min_side)
        except Exception as exc:  # a file changed or vanished after the pre-training scan
            raise RuntimeError(f"cannot read image {path}: {exc}") from exc
        return self.transform(image), label


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_num_workers(value: Any, model_on_cpu: bool) -> int:
    """`auto`: one worker per core (at most 8) when an accelerator runs the model.

    When the CPU runs the model too, loader processes preempt its OpenMP threads: on 2 cores
    (scripts/benchmark_throughput.py, MobileNetV2 at 128 px) end-to-end training reached 0.92 of the
    model-only bound with in-process loading and 0.46 with 2 workers. So on CPU, `auto` decodes in-process
    up to 4 cores and uses one worker per 4 cores beyond.
    """
    if value not in (None, "auto"):
        return int(value)
    cores = cpu_cores()
    if model_on_cpu:
        return 0 if cores <= 4 else cores // 4
    return min(8, cores)


class ImageDataModule(L.LightningDataModule):
    def __init__(
        self,
        index: DatasetIndex,
        data_config: DataConfig,
        dataset_cfg: Any,
        augment_cfg: Any,
        model_on_cpu: bool = True,
    ) -> None:
        super().__init__()
        self.index = index
        self.image_size = data_config.size
        self.batch_size = int(dataset_cfg.batch_size)
        self.num_workers = resolve_num_workers(dataset_cfg.num_workers, model_on_cpu)
        self.train_tf = train_transform(data_config, augment_cfg)
        self.eval_tf = eval_transform(data_config)
        # Decoding at 2x the crop keeps RandomResizedCrop sharp; eval decodes as every other eval path does.
        self.train_min_side = 2 * self.image_size
        self.eval_min_side = data_config.decode_min_side

    @classmethod
    def from_config(cls, index: DatasetIndex, data_config: DataConfig, cfg: Any) -> ImageDataModule:
        """Built from the full run config: the dataset, augment and trainer (accelerator) groups."""
        on_cpu = cfg.trainer.get("accelerator", "cpu") == "cpu"
        return cls(index, data_config, cfg.dataset, cfg.augment, model_on_cpu=on_cpu)

    def _loader(self, dataset: Dataset, shuffle: bool, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=shuffle and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(
            ImageListDataset(self.index.train, self.train_tf, self.train_min_side), shuffle=True
        )

    def val_dataloader(self) -> DataLoader:
        val = ImageListDataset(self.index.val, self.eval_tf, self.eval_min_side)
        return self._loader(val, shuffle=False, sampler=unpadded_sampler(val))


def unpadded_sampler(dataset: Dataset) -> Sampler | None:
    """Under DDP, a disjoint share of `dataset` per process with no padded repeats, so that validation
    metrics count every image exactly once (Lightning's default DistributedSampler repeats some to even
    out the shares); None in a single process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    world = torch.distributed.get_world_size()
    if world > 1 and len(dataset) < world:
        raise ValueError(f"the val split has {len(dataset)} image(s), fewer than the {world} DDP processes")
    return UnrepeatedDistributedSampler(dataset, shuffle=False) if world > 1 else None
