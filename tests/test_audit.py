"""The dataset audit finds planted exact and near duplicates, leakage, imbalance, tiny and gray images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import trainer.data.scan as scan
from trainer.data.audit import LeakageError, audit_dataset
from trainer.data.sources.folder import index_folder


def photo(seed: int, size: tuple[int, int] = (96, 80), gray: bool = False) -> Image.Image:
    """A picture with structure (a gradient and a few shapes): unrelated seeds give unrelated pictures."""
    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.linspace(0, 1, w)[None, :, None] * rng.integers(40, 200, 3) + rng.integers(0, 50, 3)
    img = Image.fromarray(np.broadcast_to(ramp, (h, w, 3)).astype(np.uint8))
    pen = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        pen.ellipse(
            [x, y, x + int(rng.integers(w // 8, w // 3)), y + int(rng.integers(h // 8, h // 3))], fill=colour
        )
    return img.convert("L").convert("RGB") if gray else img


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """train/val folders with known problems planted in them."""
    root = tmp_path / "photos"
    seed = 0
    for split, per_class in (
        ("train", {"cats": 12, "dogs": 4, "owls": 4}),
        ("val", {"cats": 3, "dogs": 3, "owls": 3}),
    ):
        for name, count in per_class.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                seed += 1
                photo(seed, gray=name == "owls").save(folder / f"{i}.jpg", quality=92)
    # exact copy of a train image in val (leakage), and a second exact copy within train
    shutil.copy(root / "train/cats/0.jpg", root / "val/cats/copy_of_train_0.jpg")
    shutil.copy(root / "train/cats/1.jpg", root / "train/cats/copy_of_1.jpg")
    # near copy: a train picture resized and re-encoded as PNG, in val
    Image.open(root / "train/dogs/0.jpg").resize((72, 60)).save(root / "val/dogs/resized_train_0.png")
    photo(999, size=(20, 16)).save(root / "train/dogs/tiny.jpg")
    return root


def test_audit_finds_what_was_planted(planted: Path, tmp_path: Path) -> None:
    index = index_folder(planted)
    report = audit_dataset(index, image_size=64)
    exact, near = report["exact_duplicates"], report["near_duplicates"]
    assert exact["across_train_val"]["pairs"] == 1
    assert exact["across_train_val"]["examples"] == [
        [str(planted / "train/cats/0.jpg"), str(planted / "val/cats/copy_of_train_0.jpg")]
    ]
    assert report["leaked_val_images"] == [str(planted / "val/cats/copy_of_train_0.jpg")]
    assert exact["within_train"]["pairs"] == 1 and exact["within_val"]["pairs"] == 0
    assert near["across_train_val"]["examples"] == [
        [str(planted / "train/dogs/0.jpg"), str(planted / "val/dogs/resized_train_0.png")]
    ]
    assert near["within_train"]["pairs"] == 0 and near["within_val"]["pairs"] == 0
    assert report["copies_with_different_classes"]["pairs"] == 0
    assert report["class_counts"]["cats"] == {"train": 13, "val": 4}
    assert report["imbalance_train"] == pytest.approx(13 / 4)
    assert report["tiny_images"]["count"] == 1 and report["tiny_images"]["examples"][0].endswith("tiny.jpg")
    assert report["grayscale_only_classes"] == ["owls"]
    assert len(index.val) == 11, "warn keeps the val copies"
    json.dumps(report)  # audit.json is plain JSON


def test_leakage_error_and_drop(planted: Path) -> None:
    with pytest.raises(LeakageError, match="1 val image"):
        audit_dataset(index_folder(planted), image_size=64, on_leakage="error")
    index = index_folder(planted)
    report = audit_dataset(index, image_size=64, on_leakage="drop")
    assert report["dropped_val_images"] == 1 and len(index.val) == 10
    assert str(planted / "val/cats/copy_of_train_0.jpg") not in {p for p, _ in index.val}


def test_audit_reuses_the_scan_cache(planted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = index_folder(planted)
    scan.drop_bad_images(index, "skip")
    monkeypatch.setattr(scan, "inspect_file", lambda path: pytest.fail(f"decoded {path} twice"))
    assert audit_dataset(index, image_size=64)["exact_duplicates"]["across_train_val"]["pairs"] == 1
