"""Camera Scene Detection (CamSDD, Mobile AI 2021 challenge): 30 scene classes, training + validation folders.

It is handed out to registered challenge participants, not at a public URL, so it is never downloaded: point
`dataset.root` at the folders you got. Classes are ordered by their numeric folder prefix when every folder
has one ("1_Portrait" ... "30_..."), which keeps the challenge's label numbers, else by name; names drop the
prefix and underscores.
"""

from __future__ import annotations

import re
from pathlib import Path

from trainer.data.index import DatasetIndex, Sample
from trainer.data.sources.folder import DatasetLayoutError, index_class_folders

NUM_CLASSES = 30
SPLIT_NAMES = (("training", "validation"), ("train", "val"))
_PREFIX = re.compile(r"^(\d+)[_\-. ]*")

HOW_TO_GET = f"""\
The Camera Scene Detection dataset (CamSDD, {NUM_CLASSES} classes) cannot be downloaded automatically:
  1. Register for the Mobile AI 2021 Real-Time Camera Scene Detection Challenge on CodaLab
     (https://competitions.codalab.org/competitions/28113; workshop: https://ai-benchmark.com/workshops/mai/2021/)
     and download the data from the competition's data page, or get CamSDD from its authors.
  2. Unpack it so that ROOT/training/<class>/ and ROOT/validation/<class>/ hold the images (train/ and val/
     are accepted too); both splits need the same {NUM_CLASSES} labelled class folders.
  3. Run with dataset.root=ROOT (the default is data/camera_scene)."""


def class_order(folders: list[str]) -> list[str]:
    """Numeric-prefix order when all folders are numbered (so '10_x' follows '9_x'), else alphabetical."""
    if all(_PREFIX.match(f) for f in folders):
        return sorted(folders, key=lambda f: (int(_PREFIX.match(f).group(1)), f))
    return sorted(folders)


def readable(folder: str) -> str:
    """'15_Sunset_Sunrise' -> 'Sunset Sunrise'."""
    return _PREFIX.sub("", folder).replace("_", " ").strip() or folder


def index_camera_scene(root: Path, name: str = "camera_scene") -> DatasetIndex:
    """Check the layout (two splits, the same 30 class folders in each) and index it."""
    splits = next(
        ((root / t, root / v) for t, v in SPLIT_NAMES if (root / t).is_dir() and (root / v).is_dir()), None
    )
    if splits is None:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DatasetLayoutError(
            f"dataset.root={root} has no training/ + validation/ (or train/ + val/) folders, only {found}.\n"
            + HOW_TO_GET
        )
    train_files, val_files = (index_class_folders(split) for split in splits)
    for split, files in zip(splits, (train_files, val_files), strict=True):
        if len(files) != NUM_CLASSES:
            raise DatasetLayoutError(
                f"{split} has {len(files)} class folders, Camera Scene has {NUM_CLASSES}: "
                f"{sorted(files)}. Point dataset.root at the complete, unpacked dataset."
            )
    if set(train_files) != set(val_files):
        raise DatasetLayoutError(
            f"{splits[0]} and {splits[1]} hold different classes: only in {splits[0].name}: "
            f"{sorted(set(train_files) - set(val_files))}, only in {splits[1].name}: "
            f"{sorted(set(val_files) - set(train_files))}. Both splits need the same class folders."
        )
    folders = class_order(list(train_files))
    train: list[Sample] = [(p, i) for i, f in enumerate(folders) for p in train_files[f]]
    val: list[Sample] = [(p, i) for i, f in enumerate(folders) for p in val_files[f]]
    classes = [readable(f) for f in folders]
    return DatasetIndex(classes=classes, train=train, val=val, name=name, extra={"folders": folders})


def camera_scene(cfg) -> DatasetIndex:
    """dataset=camera_scene: the unpacked challenge folders under dataset.root (never downloaded)."""
    root = cfg.get("root")
    if not root or not Path(root).expanduser().is_dir():
        raise FileNotFoundError(f"Camera Scene data not found (dataset.root={root}).\n{HOW_TO_GET}")
    return index_camera_scene(Path(root).expanduser(), cfg.get("name", "camera_scene"))
