"""A folder of class subfolders: the user's own photos.

Accepted layouts: ROOT/train/<class>/ with ROOT/val/<class>/, or ROOT/<class>/ only (then a seeded,
stratified split takes `val_fraction` of each class). Class names are the folder names, unicode kept; names
that cannot survive labels.txt and the generated code are refused (class_names.py).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from omegaconf import OmegaConf

from trainer.data.class_names import check_class_names
from trainer.data.images import is_image_file
from trainer.data.index import DatasetIndex, Sample


class DatasetLayoutError(ValueError):
    """The folder does not have the layout we need; the message says which folder and what to do."""


def _class_dirs(folder: Path) -> list[Path]:
    """Every subfolder but hidden ones: `_background` is a class like any other."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_under(folder: Path) -> list[str]:
    """All image files below `folder` (recursive, sorted), skipping hidden folders and non-images."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames if is_image_file(f))
    return sorted(found)


def index_class_folders(folder: Path) -> dict[str, list[str]]:
    """Map class name -> image paths for every class subfolder of `folder`; empty classes are an error."""
    classes = _class_dirs(folder)
    check_class_names([c.name for c in classes], folder)
    if not classes:
        raise DatasetLayoutError(
            f"{folder} has no class subfolders: put each class's images in {folder}/<class name>/"
        )
    if len(classes) < 2:
        raise DatasetLayoutError(
            f"{folder} has one class folder ({classes[0].name}): a classifier needs at least 2 classes. "
            f"Add a folder per class next to it, e.g. {folder}/other/"
        )
    files = {c.name: _images_under(c) for c in classes}
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise DatasetLayoutError(
            f"class folder(s) with no images in {folder}: {', '.join(empty)}. "
            "Add images (jpg, png, bmp, webp, tiff, gif, heic) or remove the folder."
        )
    return files


def stratified_split(
    files: dict[str, list[str]], val_fraction: float, seed: int, where: Path
) -> tuple[list[Sample], list[Sample]]:
    """Split every class by `val_fraction` (at least one image each side), reproducibly for `seed`."""
    if not 0 < val_fraction < 1:
        raise DatasetLayoutError(f"dataset.val_fraction={val_fraction} must be between 0 and 1")
    too_few = [f"{name} ({len(paths)})" for name, paths in files.items() if len(paths) < 2]
    if too_few:
        raise DatasetLayoutError(
            f"cannot split {where} into train and val: class(es) with fewer than 2 images: "
            f"{', '.join(too_few)}. Add images, or provide {where}/train and {where}/val yourself."
        )
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for label, name in enumerate(sorted(files)):
        paths = list(files[name])
        rng.shuffle(paths)
        n_val = min(len(paths) - 1, max(1, round(len(paths) * val_fraction)))
        val.extend((p, label) for p in sorted(paths[:n_val]))
        train.extend((p, label) for p in sorted(paths[n_val:]))
    return train, val


def index_folder(root: Path, val_fraction: float = 0.2, seed: int = 0) -> DatasetIndex:
    """Index ROOT as train/ + val/ class folders, or as class folders split by `val_fraction`."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(
            f"dataset.root={root} is not a folder. Point dataset.root at a folder holding "
            "train/<class>/ and val/<class>/, or one subfolder per class."
        )
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        train_files, val_files = index_class_folders(train_dir), index_class_folders(val_dir)
        if set(train_files) != set(val_files):
            only_train = sorted(set(train_files) - set(val_files))
            only_val = sorted(set(val_files) - set(train_files))
            raise DatasetLayoutError(
                f"train and val classes differ in {root}: only in train: {only_train or 'none'}; "
                f"only in val: {only_val or 'none'}. Both splits need the same class folders."
            )
        classes = sorted(train_files)
        train = [(p, i) for i, c in enumerate(classes) for p in train_files[c]]
        val = [(p, i) for i, c in enumerate(classes) for p in val_files[c]]
    else:
        source = train_dir if train_dir.is_dir() else root
        files = index_class_folders(source)
        classes = sorted(files)
        train, val = stratified_split(files, val_fraction, seed, source)
    return DatasetIndex(classes=classes, train=train, val=val, name=root.name)


def folder_source(cfg) -> DatasetIndex:
    """dataset=folder: the user's own photos under dataset.root."""
    if OmegaConf.is_missing(cfg, "root") or cfg.root is None:
        raise DatasetLayoutError("dataset=folder needs dataset.root=/path/to/photos")
    return index_folder(Path(cfg.root), cfg.val_fraction, cfg.split_seed)
