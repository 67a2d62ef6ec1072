"""Stanford Dogs: 120 breeds (ImageNet images), with the official 12,000 train / 8,580 test lists.

The official test list serves as the val split. Classes are ordered by their folder names, which start with
the WordNet id (n02085620-Chihuahua), and named by the rest of the folder name: "Chihuahua".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.data.index import DatasetIndex, Sample
from trainer.data.prepare import Archive, prepare_dataset, resolve_archives
from trainer.data.sources.folder import DatasetLayoutError

FOLDER = "stanford_dogs"
_URL = "http://vision.stanford.edu/aditya86/ImageNetDogs/"
# sha256 as pinned by tensorflow/datasets (url_checksums/stanford_dogs.txt).
PINNED = [
    Archive(_URL + "images.tar", "a443fc2f9a851aa1a7b8e4fa4af94b8459fce2c9f5a2f4dd4669cf9673a4ec58"),
    Archive(_URL + "lists.tar", "34b47cacd9a98b5d150e084f24d29391c084c55272295ec65c85651bc35f4d6c"),
]


def breed_name(folder: str) -> str:
    """'n02097130-giant_schnauzer' -> 'giant schnauzer'."""
    return folder.split("-", 1)[-1].replace("_", " ")


def _read_list(mat_path: Path, images: Path, label: dict[str, int]) -> list[Sample]:
    """(path, label) for every file in a *_list.mat; the label comes from the file's breed folder."""
    from scipy.io import loadmat  # only this dataset needs scipy; keep it off other datasets' import path

    if not mat_path.is_file():
        raise DatasetLayoutError(f"{mat_path} is missing: lists.tar was not unpacked into {mat_path.parent}")
    relative = [str(np.ravel(item)[0]) for item in loadmat(str(mat_path))["file_list"].ravel()]
    unknown = sorted({r.split("/", 1)[0] for r in relative} - set(label))
    if unknown:
        raise DatasetLayoutError(f"{mat_path} lists breed folders missing from {images}: {unknown[:5]}")
    return [(str(images / r), label[r.split("/", 1)[0]]) for r in relative]


def index_stanford_dogs(root: Path, name: str = "stanford_dogs") -> DatasetIndex:
    """Index unpacked images.tar + lists.tar: Images/<wnid>-<breed>/*.jpg, train_list.mat, test_list.mat."""
    images = root / "Images"
    if not images.is_dir():
        raise DatasetLayoutError(f"{images} is missing: images.tar was not unpacked into {root}")
    folders = sorted(e.name for e in images.iterdir() if e.is_dir())
    label = {f: i for i, f in enumerate(folders)}
    return DatasetIndex(
        classes=[breed_name(f) for f in folders],
        train=_read_list(root / "train_list.mat", images, label),
        val=_read_list(root / "test_list.mat", images, label),
        name=name,
        extra={"wnids": [f.split("-", 1)[0] for f in folders], "val_split": "official test list"},
    )


def stanford_dogs(cfg) -> DatasetIndex:
    """dataset=stanford_dogs: images.tar and lists.tar fetched and unpacked under dataset.root."""
    archives = resolve_archives(PINNED, cfg.get("url"), cfg.get("sha256"))
    root = Path(cfg.root).expanduser()
    path = prepare_dataset(root, FOLDER, archives, download=bool(cfg.get("download", True)))
    return index_stanford_dogs(path, cfg.get("name", FOLDER))
