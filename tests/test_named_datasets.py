"""Named datasets end to end, offline: small archives in each dataset's true layout, served over local HTTP,
are downloaded, verified, unpacked and indexed through `build_index`, as `dataset=<name>` does."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from http_server import http_server_fixture  # noqa: F401  (the http_server fixture)
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from scipy.io import savemat

from trainer.data.fetch import ChecksumError
from trainer.data.index import build_index, source_builder
from trainer.data.prepare import MARKER
from trainer.data.sources.folder import DatasetLayoutError
from trainer.data.sources.imagenette import IMAGENETTE_CLASSES, IMAGEWOOF_CLASSES, archive_folder

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 60)).save(buffer, format="JPEG")
    return buffer.getvalue()


JPEG = _jpeg()


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def _tar(src: Path, out: Path, mode: str = "w:gz") -> str:
    """Pack every entry of `src` under its own name into `out`; return the archive's sha256."""
    with tarfile.open(out, mode) as tar:
        for entry in sorted(src.iterdir()):
            tar.add(entry, arcname=entry.name)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def _cfg(name: str, **overrides) -> DictConfig:
    """The node `dataset=<name>` composes: _loader.yaml, then conf/dataset/<name>.yaml, then overrides."""
    node = OmegaConf.merge(OmegaConf.load(CONF / "_loader.yaml"), OmegaConf.load(CONF / f"{name}.yaml"))
    node.pop("defaults", None)
    return OmegaConf.merge(node, overrides)


def _labels_by_folder(samples, classes_of_folder) -> bool:
    """True if every sample's label is the one its parent folder stands for."""
    return all(label == classes_of_folder[Path(path).parent.name] for path, label in samples)


# --- Imagenette / Imagewoof --------------------------------------------------------------------------------


def _imagenette_archive(out_dir: Path, folder: str, wnids: list[str], build: Path) -> str:
    """imagenette2*/ with train/<wnid>/ (2 images), val/<wnid>/ (1 image) and noisy_imagenette.csv."""
    top = build / folder
    rows = []
    for k, wnid in enumerate(wnids):
        for split, n in (("train", 2), ("val", 1)):
            for i in range(n):
                rel = f"{split}/{wnid}/{wnid}_{i}.JPEG"
                _write(top / rel, JPEG)
                noisy = wnids[(k + 1) % len(wnids)] if (split, i) == ("train", 0) and k == 0 else wnid
                rows.append([rel, wnid, wnid, noisy, noisy, noisy, str(split == "val")])
    with open(top / "noisy_imagenette.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *(f"noisy_labels_{n}" for n in (0, 1, 5, 25, 50)), "is_valid"])
        writer.writerows(rows)
    return _tar(build, out_dir / f"{folder}.tgz")


@pytest.mark.parametrize("variant", [320, "160"])
def test_imagenette_downloads_verifies_unpacks_and_indexes(http_server, tmp_path, variant):
    folder = archive_folder("imagenette2", variant)
    wnids = sorted(IMAGENETTE_CLASSES)
    sha = _imagenette_archive(http_server.directory, folder, wnids, tmp_path / "build")
    cfg = _cfg(
        "imagenette",
        root=str(tmp_path / "data"),
        variant=variant,
        url=http_server.url(f"{folder}.tgz"),
        sha256=sha,
    )
    index = build_index(cfg)
    assert index.classes == [IMAGENETTE_CLASSES[w] for w in wnids]
    assert index.classes[0] == "tench" and index.classes[-1] == "parachute"
    assert (len(index.train), len(index.val)) == (20, 10)
    assert _labels_by_folder(index.train + index.val, {w: i for i, w in enumerate(wnids)})
    assert all(f"/{folder}/val/" in p for p, _ in index.val)
    assert (tmp_path / "data" / folder / MARKER).is_file()
    assert build_index(cfg).val == index.val  # second run: no download, same index
    assert len(http_server.requests_for(f"{folder}.tgz")) == 1


def test_imagenette_label_noise_reads_the_noisy_column(http_server, tmp_path):
    wnids = sorted(IMAGENETTE_CLASSES)
    sha = _imagenette_archive(http_server.directory, "imagenette2-320", wnids, tmp_path / "build")
    url = http_server.url("imagenette2-320.tgz")
    clean = build_index(_cfg("imagenette", root=str(tmp_path / "data"), url=url, sha256=sha))
    noisy = build_index(_cfg("imagenette", root=str(tmp_path / "data"), url=url, sha256=sha, label_noise=5))
    changed = [(c, n) for c, n in zip(clean.train, noisy.train, strict=True) if c != n]
    assert changed == [((clean.train[0][0], 0), (clean.train[0][0], 1))]
    assert noisy.val == clean.val


def test_imagewoof_names_the_breeds(http_server, tmp_path):
    wnids = sorted(IMAGEWOOF_CLASSES)
    sha = _imagenette_archive(http_server.directory, "imagewoof2-320", wnids, tmp_path / "build")
    cfg = _cfg(
        "imagewoof", root=str(tmp_path / "data"), url=http_server.url("imagewoof2-320.tgz"), sha256=sha
    )
    index = build_index(cfg)
    assert index.classes[:3] == ["Shih-Tzu", "Rhodesian ridgeback", "beagle"] and len(index.classes) == 10


def test_mirror_without_checksum_is_held_to_the_pinned_one(http_server, tmp_path):
    _imagenette_archive(
        http_server.directory, "imagenette2-320", sorted(IMAGENETTE_CLASSES), tmp_path / "build"
    )
    cfg = _cfg("imagenette", root=str(tmp_path / "data"), url=http_server.url("imagenette2-320.tgz"))
    with pytest.raises(ChecksumError, match="5020a9130cea0348"):  # the pinned sha256 of imagenette2-320.tgz
        build_index(cfg)
    assert not (tmp_path / "data" / "imagenette2-320").exists()


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="full, 320 or 160"):
        archive_folder("imagenette2", 224)


# --- Stanford Dogs -----------------------------------------------------------------------------------------

DOG_FOLDERS = ["n02097130-giant_schnauzer", "n02085620-Chihuahua", "n02086240-Shih-Tzu"]


def _cell(paths: list[str]) -> np.ndarray:
    """A MATLAB cell array column of strings, as the official *_list.mat files hold."""
    return np.array(paths, dtype=object).reshape(-1, 1)


def _dogs_archives(out_dir: Path, build: Path) -> dict[str, str]:
    """images.tar (Images/<wnid>-<breed>/*.jpg) and lists.tar (file/train/test_list.mat); name -> sha256."""
    train, test = [], []
    for folder in DOG_FOLDERS:
        wnid = folder.split("-")[0]
        for i in range(3):
            rel = f"{folder}/{wnid}_{i}.jpg"
            _write(build / "images" / "Images" / rel, JPEG)
            (test if i == 2 else train).append(rel)
    lists = build / "lists"
    lists.mkdir()
    for name, files in (("file_list", train + test), ("train_list", train), ("test_list", test)):
        labels = np.array([[DOG_FOLDERS.index(f.split("/")[0]) + 1] for f in files], dtype=np.uint8)
        savemat(
            lists / f"{name}.mat",
            {"file_list": _cell(files), "annotation_list": _cell(files), "labels": labels},
        )
    return {name: _tar(build / name, out_dir / f"{name}.tar", "w") for name in ("images", "lists")}


def test_stanford_dogs_from_a_mirror_folder(http_server, tmp_path):
    (http_server.directory / "dogs").mkdir()
    shas = _dogs_archives(http_server.directory / "dogs", tmp_path / "build")
    cfg = _cfg(
        "stanford_dogs",
        root=str(tmp_path / "data"),
        url=http_server.url("dogs/"),
        sha256={"images.tar": shas["images"], "lists.tar": shas["lists"]},
    )
    index = build_index(cfg)
    assert index.classes == ["Chihuahua", "Shih-Tzu", "giant schnauzer"]  # ordered by wnid folder
    assert (len(index.train), len(index.val)) == (6, 3)
    assert _labels_by_folder(index.train + index.val, {f: i for i, f in enumerate(sorted(DOG_FOLDERS))})
    assert all(p.endswith("_2.jpg") for p, _ in index.val) and all(Path(p).is_file() for p, _ in index.train)
    assert index.extra["wnids"] == ["n02085620", "n02086240", "n02097130"]
    assert [len(http_server.requests_for(f"dogs/{n}.tar")) for n in ("images", "lists")] == [1, 1]


# --- Tiny ImageNet -----------------------------------------------------------------------------------------

TINY_WNIDS = ["n02012849", "n01443537", "n03126707"]
TINY_WORDS = {
    "n01443537": "goldfish, Carassius auratus",
    "n02012849": "crane",
    "n03126707": "crane",
    "n09999999": "not used, other",
}


def _tiny_archive(out: Path, build: Path) -> None:
    top = build / "tiny-imagenet-200"
    _write(top / "wnids.txt", "\n".join(TINY_WNIDS) + "\n")
    _write(top / "words.txt", "".join(f"{w}\t{n}\n" for w, n in TINY_WORDS.items()))
    annotations = []
    for k, wnid in enumerate(TINY_WNIDS):
        for i in range(2):
            _write(top / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", JPEG)
        _write(top / "train" / wnid / f"{wnid}_boxes.txt", f"{wnid}_0.JPEG\t0\t0\t8\t6\n")
        _write(top / "val" / "images" / f"val_{k}.JPEG", JPEG)
        annotations.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t8\t6\n")
    _write(top / "val" / "val_annotations.txt", "".join(annotations))
    _write(top / "test" / "images" / "test_0.JPEG", JPEG)
    with zipfile.ZipFile(out, "w") as zf:
        for path in sorted(top.rglob("*")):
            zf.write(path, path.relative_to(build).as_posix())


def test_tiny_imagenet_unpinned_zip_is_indexed(http_server, tmp_path, caplog):
    _tiny_archive(http_server.directory / "tiny-imagenet-200.zip", tmp_path / "build")
    sha = hashlib.sha256((http_server.directory / "tiny-imagenet-200.zip").read_bytes()).hexdigest()
    cfg = _cfg("tiny_imagenet", root=str(tmp_path / "data"), url=http_server.url("tiny-imagenet-200.zip"))
    with caplog.at_level(logging.WARNING, logger="trainer.data.fetch"):
        index = build_index(cfg)
    assert sha in caplog.text  # not pinned: the computed checksum is reported
    assert index.extra["wnids"] == sorted(TINY_WNIDS)
    assert index.classes == ["goldfish", "crane (n02012849)", "crane (n03126707)"]
    assert (len(index.train), len(index.val)) == (6, 3)
    val_labels = {Path(p).name: label for p, label in index.val}
    assert val_labels == {"val_0.JPEG": 1, "val_1.JPEG": 0, "val_2.JPEG": 2}
    assert all(Path(p).is_file() for p, _ in index.train + index.val)


# --- Camera Scene ------------------------------------------------------------------------------------------


def _camera_scene(root: Path, splits=("training", "validation"), classes: int = 30) -> None:
    for split in splits:
        for i in range(1, classes + 1):
            _write(root / split / f"{i}_Scene_{i}" / "a.jpg", JPEG)


@pytest.mark.parametrize("splits", [("training", "validation"), ("train", "val")])
def test_camera_scene_layout_is_indexed_in_challenge_order(tmp_path, splits):
    _camera_scene(tmp_path / "cam", splits)
    index = build_index(_cfg("camera_scene", root=str(tmp_path / "cam")))
    assert index.num_classes == 30
    assert index.classes[:3] == ["Scene 1", "Scene 2", "Scene 3"] and index.classes[9] == "Scene 10"
    assert (len(index.train), len(index.val)) == (30, 30)
    assert all(f"/{splits[1]}/{label + 1}_Scene_" in path for path, label in index.val)


@pytest.mark.parametrize("root", [None, "missing"])
def test_camera_scene_without_data_explains_how_to_get_it(tmp_path, root):
    cfg = _cfg("camera_scene", root=str(tmp_path / root) if root else None)
    with pytest.raises(FileNotFoundError) as err:
        build_index(cfg)
    message = str(err.value)
    assert "codalab" in message.lower() and "ROOT/training/<class>/" in message and "dataset.root" in message


def test_camera_scene_wrong_layouts_are_explained(tmp_path):
    _camera_scene(tmp_path / "few", classes=29)
    with pytest.raises(DatasetLayoutError, match="has 29 class folders, Camera Scene has 30"):
        build_index(_cfg("camera_scene", root=str(tmp_path / "few")))
    _camera_scene(tmp_path / "differ")
    (tmp_path / "differ" / "validation" / "30_Scene_30").rename(
        tmp_path / "differ" / "validation" / "30_Other"
    )
    with pytest.raises(DatasetLayoutError, match=r"only in training: \['30_Scene_30'\]"):
        build_index(_cfg("camera_scene", root=str(tmp_path / "differ")))
    (tmp_path / "flat" / "1_Portrait").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="no training/ \\+ validation/"):
        build_index(_cfg("camera_scene", root=str(tmp_path / "flat")))


# --- configs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["imagenette", "imagewoof", "stanford_dogs", "tiny_imagenet", "camera_scene"]
)
def test_dataset_configs_name_their_source_builder(name):
    cfg = _cfg(name)
    builder = source_builder(cfg.source)
    assert builder.func.__module__.startswith("trainer.data.sources.") and cfg.name == name
    assert cfg.download is (name != "camera_scene")


@pytest.mark.parametrize("path", sorted(CONF.glob("[!_]*.yaml")), ids=lambda p: p.stem)
def test_source_names_saved_before_targets_find_the_same_builder(path):
    """Checkpoints written before `dataset.source` had a `_target_` store the source's name instead."""
    assert source_builder(path.stem).func is source_builder(_cfg(path.stem).source).func


# --- Every dataset config end to end: local server, download, verify, extract, train one epoch --------------

TRAIN_FAST = [
    "model=demo",
    "model.alpha=0.25",
    "dataset.image_size=32",
    "dataset.batch_size=8",
    "trainer.max_epochs=1",
    "export.enabled=false",
]


def _served(name: str, server, build: Path) -> list[str]:
    """Put `name`'s archive(s) on the local server; return the overrides that point the config at them."""
    if name in ("imagenette", "imagewoof"):
        family, classes = (
            ("imagenette2", IMAGENETTE_CLASSES) if name == "imagenette" else ("imagewoof2", IMAGEWOOF_CLASSES)
        )
        folder = archive_folder(family, 320)
        sha = _imagenette_archive(server.directory, folder, sorted(classes), build)
        return [f"dataset.url={server.url(folder + '.tgz')}", f"dataset.sha256={sha}"]
    if name == "stanford_dogs":
        (server.directory / "dogs").mkdir()
        shas = _dogs_archives(server.directory / "dogs", build)
        return [
            f"dataset.url={server.url('dogs/')}",
            f"dataset.sha256={{images.tar:{shas['images']},lists.tar:{shas['lists']}}}",
        ]
    _tiny_archive(server.directory / "tiny-imagenet-200.zip", build)
    return [f"dataset.url={server.url('tiny-imagenet-200.zip')}"]


@pytest.mark.parametrize("name", ["imagenette", "imagewoof", "stanford_dogs", "tiny_imagenet"])
def test_named_dataset_trains_from_the_local_server(http_server, tmp_path, name):
    from trainer.cli import compose_config
    from trainer.training.run import train

    overrides = [
        f"dataset={name}",
        f"dataset.root={tmp_path / 'data'}",
        *_served(name, http_server, tmp_path / "b"),
    ]
    metrics = train(compose_config([*TRAIN_FAST, *overrides], output_dir=str(tmp_path / "run")))
    assert metrics["dataset"] == name and metrics["epochs"] == 1
    assert metrics["train_images"] > 0 and 0 <= metrics["val_top1"] <= 1


@pytest.mark.slow
def test_camera_scene_trains_and_reports_the_challenge_score(tmp_path):
    from trainer.cli import compose_config
    from trainer.training.run import train

    _camera_scene(tmp_path / "cam")
    overrides = [
        *TRAIN_FAST,
        "dataset=camera_scene",
        f"dataset.root={tmp_path / 'cam'}",
        "export.enabled=true",
        "export.formats=[onnx]",
        "export.onnx.int8=false",
        "export.latency.runs=5",
        "export.latency.warmup=1",
    ]
    metrics = train(compose_config(overrides, output_dir=str(tmp_path / "run")))
    assert metrics["num_classes"] == 30 and metrics["val_top3"] is not None
    assert metrics["runtime_s"] > 0 and "onnxruntime" in metrics["runtime"]
    expected = (
        2 ** ((100 * metrics["val_top1"] - 96) + (100 * metrics["val_top3"] - 99)) / metrics["runtime_s"]
    )
    assert metrics["mai_score"] == pytest.approx(expected)
