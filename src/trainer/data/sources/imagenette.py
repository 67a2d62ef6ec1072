"""Imagenette and Imagewoof (fast.ai): 10 ImageNet classes each, with the official train/val split.

Imagenette's classes are easy to tell apart, Imagewoof's are 10 dog breeds (hard). Both come full size or
resized so the shorter side is 320 or 160 px (`dataset.variant`), with the same images and split in each.
Classes are ordered by WordNet id (the folder names) and named in words.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

from trainer.data.index import DatasetIndex, Sample
from trainer.data.prepare import Archive, prepare_dataset, resolve_archives
from trainer.data.sources.folder import DatasetLayoutError, index_class_folders

_BASE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/"
# sha256 of the fast.ai archives as pinned by tensorflow/datasets (url_checksums/imagenette.txt and
# imagewoof.txt); the imagenette2-160/-320 and imagewoof2-320 values are pinned identically by FastAI.jl.
_SHA256 = {
    "imagenette2": "de32de18a7d8df0114d5e2c3c14cafb9558e8f00441a73aa7953681ad02be49c",
    "imagenette2-320": "5020a9130cea0348272823cb12d2db7e981c6f2afa3dce71ccd5b8013005c55e",
    "imagenette2-160": "88daccb09b6fce93f45e6c09ddeb269cce705549e6bff322092a2a5a11489863",
    "imagewoof2": "d6f2ffc7b95663f7701b94cea32db1683b9a50dd389382c7cca024e840af0379",
    "imagewoof2-320": "4e4905ed7643120daaf9bf3b2ef7f3a7e8396d9bdaf254a38c6f01f618b4973d",
    "imagewoof2-160": "663c22f69c2802d85e2a67103c017e047096702ffddf9149a14011b7002539bf",
}
_VARIANT_SUFFIX = {"full": "", "320": "-320", "160": "-160"}
NOISE_LEVELS = (0, 1, 5, 25, 50)  # percent of train labels flipped in fast.ai's noisy_*.csv

IMAGENETTE_CLASSES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}
IMAGEWOOF_CLASSES = {
    "n02086240": "Shih-Tzu",
    "n02087394": "Rhodesian ridgeback",
    "n02088364": "beagle",
    "n02089973": "English foxhound",
    "n02093754": "Border terrier",
    "n02096294": "Australian terrier",
    "n02099601": "golden retriever",
    "n02105641": "Old English sheepdog",
    "n02111889": "Samoyed",
    "n02115641": "dingo",
}


def archive_folder(family: str, variant: object) -> str:
    """Folder (and archive stem) for a variant: ('imagenette2', 320) -> 'imagenette2-320'."""
    key = str(variant).lower().removesuffix("px")
    if key not in _VARIANT_SUFFIX:
        raise ValueError(f"dataset.variant={variant!r} is unknown; choose full, 320 or 160")
    return family + _VARIANT_SUFFIX[key]


def index_imagenette(
    root: Path,
    names: Mapping[str, str],
    name: str,
    label_noise: int = 0,
    noisy_csv: str = "noisy_imagenette.csv",
) -> DatasetIndex:
    """Index an unpacked imagenette2*/imagewoof2* folder (train/<wnid>/, val/<wnid>/).

    `label_noise` > 0 takes the train labels from column noisy_labels_<n> of `noisy_csv` (val stays clean),
    to study training under label noise as fast.ai's benchmark does.
    """
    train_files = index_class_folders(_split_dir(root, "train"))
    val_files = index_class_folders(_split_dir(root, "val"))
    if set(train_files) != set(val_files):
        raise DatasetLayoutError(
            f"{root}: train and val hold different classes ({sorted(set(train_files) ^ set(val_files))}); "
            "the archive is damaged: delete the folder to unpack it again."
        )
    wnids = sorted(train_files)
    train: list[Sample] = [(p, i) for i, w in enumerate(wnids) for p in train_files[w]]
    val: list[Sample] = [(p, i) for i, w in enumerate(wnids) for p in val_files[w]]
    if label_noise:
        train = _noisy_train(root / noisy_csv, wnids, label_noise)
    classes = [names.get(w, w) for w in wnids]
    return DatasetIndex(classes=classes, train=train, val=val, name=name, extra={"wnids": wnids})


def _split_dir(root: Path, split: str) -> Path:
    folder = root / split
    if not folder.is_dir():
        raise DatasetLayoutError(
            f"{folder} is missing: {root} is not an unpacked Imagenette/Imagewoof archive. Delete it to "
            "download it again, or point dataset.url at the right archive."
        )
    return folder


def _noisy_train(csv_path: Path, wnids: list[str], level: int) -> list[Sample]:
    if level not in NOISE_LEVELS:
        raise ValueError(f"dataset.label_noise={level} is unknown; choose one of {NOISE_LEVELS}")
    column = f"noisy_labels_{level}"
    label = {w: i for i, w in enumerate(wnids)}
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or column not in rows[0]:
        raise DatasetLayoutError(f"{csv_path} has no column {column}; set dataset.label_noise=0")
    root = csv_path.parent
    train = [
        (str(root / r["path"]), label[r[column]]) for r in rows if r["is_valid"].lower() not in ("true", "1")
    ]
    return sorted(train)


def _build(cfg, family: str, names: Mapping[str, str], noisy_csv: str) -> DatasetIndex:
    folder = archive_folder(family, cfg.get("variant", 320))
    pinned = [Archive(f"{_BASE_URL}{folder}.tgz", _SHA256[folder])]
    archives = resolve_archives(pinned, cfg.get("url"), cfg.get("sha256"))
    root = Path(cfg.root).expanduser()
    path = prepare_dataset(root, folder, archives, download=bool(cfg.get("download", True)), inner=folder)
    label_noise = int(cfg.get("label_noise", 0))
    return index_imagenette(path, names, cfg.get("name", folder), label_noise, noisy_csv)


def imagenette(cfg) -> DatasetIndex:
    """dataset=imagenette: fetched and unpacked under dataset.root on first use."""
    return _build(cfg, "imagenette2", IMAGENETTE_CLASSES, "noisy_imagenette.csv")


def imagewoof(cfg) -> DatasetIndex:
    """dataset=imagewoof: fetched and unpacked under dataset.root on first use."""
    return _build(cfg, "imagewoof2", IMAGEWOOF_CLASSES, "noisy_imagewoof.csv")
