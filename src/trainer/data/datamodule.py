"""LightningDataModule over a `DatasetIndex`: images decoded in worker processes, never starving the model."""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer.data.data_config import DataConfig
from trainer.data.images import load_rgb
from trainer.data.index import DatasetIndex, Sample
from trainer.data.transforms import eval_transform, train_transform
from trainer.utils.cpus import usable_cpus

log = logging.getLogger(__name__)


def read_image(path: str, min_side: int | None) -> Image.Image:
    try:
        return load_rgb(path, min_side)
    except Exception as exc:  # a file changed or vanished after the pre-training scan
        raise RuntimeError(f"cannot read image {path}: {exc}") from exc


def decode_all(samples: list[Sample], min_side: int, threads: int, shrink: bool = True) -> list[np.ndarray]:
    """Every image decoded once, as uint8 RGB arrays, exactly as `ImageListDataset` would decode it.

    JPEG draft decoding releases the GIL, so threads decode in parallel. With `shrink`, non-JPEGs (decoded at
    full size) are shrunk to `min_side` so that one large PNG cannot fill the memory (training crops only;
    evaluation keeps the pixels every other eval path sees).
    """

    def one(sample: Sample) -> np.ndarray:
        image = read_image(sample[0], min_side)
        scale = min_side / min(image.size)
        if shrink and scale < 0.5:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
        return np.asarray(image)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, samples))


class ImageListDataset(Dataset):
    """(path, label) samples -> (tensor, label); JPEGs are decoded at reduced scale where it loses nothing.

    With `decoded` (from `decode_all`), images come from memory instead of being decoded every epoch.
    """

    def __init__(
        self,
        samples: list[Sample],
        transform: Callable,
        min_side: int | None = None,
        decoded: list[np.ndarray] | None = None,
    ) -> None:
        self.samples = samples
        self.transform = transform
        self.min_side = min_side
        self.decoded = decoded

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        image = Image.fromarray(self.decoded[i]) if self.decoded else read_image(path, self.min_side)
        return self.transform(image), label


def memory_bytes() -> int:
    """Physical memory of the machine (0 where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def resolve_cache(value: Any, images: int, min_side: int) -> bool:
    """`auto`: keep decoded images in memory when even the largest they can be (a JPEG drafted to just under
    twice `min_side`, 4:3) would take at most a quarter of the machine's memory."""
    if value in (True, False):
        return value
    if value != "auto":
        raise ValueError(f"dataset.cache={value!r}: use auto, true (decode once, keep in memory) or false")
    worst = images * (2 * min_side) ** 2 * 4 // 3 * 3
    return worst <= memory_bytes() // 4


def resolve_num_workers(value: Any, model_on_cpu: bool) -> int:
    """`auto`: one worker per core but one (at most 16) when an accelerator runs the model.

    When the CPU runs the model too, loader processes preempt its OpenMP threads: on 2 cores
    (scripts/benchmark_throughput.py, MobileNetV2 at 128 px) end-to-end training reached 0.92 of the
    model-only bound with in-process loading and 0.46 with 2 workers. So on CPU, `auto` decodes in-process
    up to 4 cores and uses one worker per 4 cores beyond.
    """
    if value not in (None, "auto"):
        return int(value)
    cores = usable_cpus()
    if model_on_cpu:
        return 0 if cores <= 4 else cores // 4
    return max(1, min(16, cores - 1))  # the main process keeps one core to feed the accelerator


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
        images = len(index.train) + len(index.val)
        self.cache = resolve_cache(dataset_cfg.get("cache", False), images, self.train_min_side)
        self._decoded: dict[str, list[np.ndarray]] = {}

    def decoded(self, split: str) -> list[np.ndarray] | None:
        """The split's images decoded once (on first use) when `dataset.cache` is on, else None."""
        if not self.cache:
            return None
        if split not in self._decoded:
            samples = getattr(self.index, split)
            min_side = self.train_min_side if split == "train" else self.eval_min_side
            start = time.perf_counter()
            self._decoded[split] = decode_all(samples, min_side, usable_cpus(), shrink=split == "train")
            size = sum(a.nbytes for a in self._decoded[split]) / 2**20
            seconds = time.perf_counter() - start
            log.info(
                "Decoded %d %s images once into memory (%.0f MB, %.1f s)", len(samples), split, size, seconds
            )
        return self._decoded[split]

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
        train = ImageListDataset(self.index.train, self.train_tf, self.train_min_side, self.decoded("train"))
        return self._loader(train, shuffle=True)

    def probe_dataloader(self, images_per_class: int) -> DataLoader:
        """Up to `images_per_class` train images of each class with the eval transform (no augmentation),
        in order: what a linear probe of the pretrained features fits the new head on."""
        keep = balanced_subset([label for _, label in self.index.train], images_per_class)
        samples = [self.index.train[i] for i in keep]  # decoded as every eval path decodes (not the cache)
        return self._loader(ImageListDataset(samples, self.eval_tf, self.eval_min_side), shuffle=False)

    def val_dataloader(self) -> DataLoader:
        val = ImageListDataset(self.index.val, self.eval_tf, self.eval_min_side, self.decoded("val"))
        return self._loader(val, shuffle=False, sampler=unpadded_sampler(val))


def balanced_subset(labels: list[int], per_class: int) -> list[int]:
    """Indices of at most `per_class` samples of each class, in order (a probe needs no more)."""
    seen: dict[int, int] = defaultdict(int)
    keep = []
    for i, label in enumerate(labels):
        if seen[label] < per_class:
            seen[label] += 1
            keep.append(i)
    return keep


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
