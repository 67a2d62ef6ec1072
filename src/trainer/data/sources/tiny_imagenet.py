"""Tiny ImageNet (Stanford CS231n): 200 ImageNet classes at 64x64 px, 500 train and 50 val images each.

Val images sit in one folder with labels in val/val_annotations.txt; the test split has no labels and is not
used. Classes are ordered by WordNet id and named by the first synonym in words.txt.
"""

from __future__ import annotations

from pathlib import Path

from trainer.data.index import DatasetIndex, Sample
from trainer.data.prepare import Archive, prepare_dataset, resolve_archives
from trainer.data.sources.folder import DatasetLayoutError, index_class_folders

FOLDER = "tiny-imagenet-200"
# No published sha256 for this archive is known to us, so none is pinned: the computed value is printed
# instead (pin it with dataset.sha256).
PINNED = [Archive("http://cs231n.stanford.edu/tiny-imagenet-200.zip", None)]


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetLayoutError(
            f"{path} is missing: {path.parent} is not an unpacked {FOLDER}.zip; delete it to fetch it again."
        )
    return [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]


def readable_names(words_txt: Path, wnids: list[str]) -> list[str]:
    """First synonym of each wnid in words.txt; names that collide get their wnid appended."""
    words = dict(line.split("\t", 1) for line in _read_lines(words_txt) if "\t" in line)
    names = [words.get(w, w).split(",")[0].strip() for w in wnids]
    return [f"{n} ({w})" if names.count(n) > 1 else n for n, w in zip(names, wnids, strict=True)]


def index_tiny_imagenet(root: Path, name: str = "tiny_imagenet") -> DatasetIndex:
    """Index unpacked tiny-imagenet-200: train/<wnid>/images/*, val/images/* named in val_annotations.txt."""
    wnids = sorted(_read_lines(root / "wnids.txt"))
    label = {w: i for i, w in enumerate(wnids)}
    train_files = index_class_folders(root / "train")
    if set(train_files) != set(wnids):
        raise DatasetLayoutError(
            f"{root}/train class folders do not match wnids.txt ({sorted(set(train_files) ^ set(wnids))}); "
            "the archive is damaged: delete the folder to unpack it again."
        )
    train: list[Sample] = [(p, label[w]) for w in wnids for p in train_files[w]]
    val: list[Sample] = []
    for line in _read_lines(root / "val" / "val_annotations.txt"):
        filename, wnid = line.split("\t")[:2]
        if wnid not in label:
            raise DatasetLayoutError(f"val_annotations.txt in {root} names {wnid}, which is not in wnids.txt")
        val.append((str(root / "val" / "images" / filename), label[wnid]))
    classes = readable_names(root / "words.txt", wnids)
    return DatasetIndex(classes=classes, train=train, val=sorted(val), name=name, extra={"wnids": wnids})


def tiny_imagenet(cfg) -> DatasetIndex:
    """dataset=tiny_imagenet: fetched and unpacked under dataset.root on first use."""
    archives = resolve_archives(PINNED, cfg.get("url"), cfg.get("sha256"))
    root = Path(cfg.root).expanduser()
    path = prepare_dataset(root, FOLDER, archives, download=bool(cfg.get("download", True)), inner=FOLDER)
    return index_tiny_imagenet(path, cfg.get("name", "tiny_imagenet"))
