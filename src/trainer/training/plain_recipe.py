"""The plain transfer-learning recipe everyone starts from: the yardstick for our speed and accuracy claims.

It is torchvision's transfer-learning tutorial: ImageFolder + torchvision transforms (RandomResizedCrop +
flip, Resize + CenterCrop for eval), a DataLoader, SGD (lr 0.001, momentum 0.9) with StepLR (step 7,
gamma 0.1), cross-entropy, NCHW fp32 and a hand-written loop. Only the backbone is ours, so both recipes
start from the same weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

from trainer.data.index import DatasetIndex

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class PlainResult:
    val_top1_per_epoch: list[float]
    train_images: int
    train_seconds: float

    @property
    def images_per_sec(self) -> float:
        return self.train_images / self.train_seconds


def split_folder_root(index: DatasetIndex) -> Path:
    """ROOT of the index's ROOT/train/<class>/ + ROOT/val/<class>/ files, which ImageFolder needs."""
    root = Path(index.train[0][0]).parents[2]
    if not ((root / "train").is_dir() and (root / "val").is_dir()):
        raise ValueError(
            f"the plain recipe needs ROOT/train/<class>/ + ROOT/val/<class>/ folders; {root} has not"
        )
    return root


def plain_loaders(
    root: Path, image_size: int, batch_size: int, num_workers: int
) -> tuple[DataLoader, DataLoader]:
    """The tutorial's ImageFolder loaders, scaled to `image_size` (it uses 224 with a 256 resize)."""
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    val_tf = T.Compose(
        [T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), normalize]
    )
    train = datasets.ImageFolder(str(Path(root) / "train"), train_tf)
    val = datasets.ImageFolder(str(Path(root) / "val"), val_tf)
    kwargs = {"batch_size": batch_size, "num_workers": num_workers}
    return DataLoader(train, shuffle=True, **kwargs), DataLoader(val, shuffle=False, **kwargs)


def evaluate(model: nn.Module, loader: DataLoader, device: str = "cpu") -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
            total += len(y)
    return correct / total


def train_plain(
    model: nn.Module,
    root: Path,
    image_size: int,
    epochs: int,
    batch_size: int = 4,
    num_workers: int = 0,
    max_steps: int | None = None,
    validate: bool = True,
    device: str = "cpu",
) -> PlainResult:
    """Fine-tune `model` (head already replaced) the tutorial's way; val top-1 after every epoch.

    `max_steps` stops each epoch early (for throughput measurements); the timer covers training steps with
    their data loading, not validation. `device` ("cuda") is where the tutorial moves model and batches.
    """
    train_loader, val_loader = plain_loaders(root, image_size, batch_size, num_workers)
    model.to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    top1, images, seconds = [], 0, 0.0
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for step, (x, y) in enumerate(train_loader):
            optimizer.zero_grad()
            loss = criterion(model(x.to(device)), y.to(device))
            loss.backward()
            optimizer.step()
            images += len(y)
            if max_steps is not None and step + 1 >= max_steps:
                break
        seconds += time.perf_counter() - start
        scheduler.step()
        if validate:
            top1.append(evaluate(model, val_loader, device))
    return PlainResult(top1, images, seconds)
