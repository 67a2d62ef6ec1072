"""The class-folder source on messy real folders: layouts, junk files, and every bad-input error."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from conftest import class_image, make_class_folder
from omegaconf import OmegaConf

from trainer.data.index import build_index
from trainer.data.scan import BadImagesError, drop_bad_images, map_with_time_limit
from trainer.data.sources.folder import DatasetLayoutError, index_folder


def test_train_val_layout_keeps_unicode_class_names(tmp_path):
    names = {"Grüner Apfel": 3, "чай": 3, "café au lait": 3}
    make_class_folder(tmp_path / "train", names)
    make_class_folder(tmp_path / "val", {k: 1 for k in names})
    index = index_folder(tmp_path)
    assert index.classes == sorted(names)
    assert len(index.train) == 9 and len(index.val) == 3
    assert {label for _, label in index.val} == {0, 1, 2}


def test_single_folder_is_split_stratified_and_reproducibly(tmp_path):
    make_class_folder(tmp_path, {"a": 10, "b": 5})
    first = index_folder(tmp_path, val_fraction=0.2, seed=3)
    again = index_folder(tmp_path, val_fraction=0.2, seed=3)
    other = index_folder(tmp_path, val_fraction=0.2, seed=4)
    assert first.val == again.val and first.train == again.train
    assert first.val != other.val
    val_counts = [sum(1 for _, y in first.val if y == c) for c in (0, 1)]
    assert val_counts == [2, 1]
    assert not {p for p, _ in first.train} & {p for p, _ in first.val}


def test_junk_files_and_nested_folders(tmp_path):
    make_class_folder(tmp_path / "train", {"cat": 2, "dog": 2})
    make_class_folder(tmp_path / "val", {"cat": 1, "dog": 1})
    for junk in (".DS_Store", "Thumbs.db", "notes.txt", "._img_0.jpg"):
        (tmp_path / "train" / "cat" / junk).write_bytes(b"junk")
    nested = tmp_path / "train" / "dog" / "2024 trip"
    nested.mkdir()
    class_image(1).save(nested / "extra.png")
    (tmp_path / "train" / ".hidden_class").mkdir()
    index = index_folder(tmp_path)
    assert index.classes == ["cat", "dog"]
    assert len(index.train) == 5
    assert all(p.endswith((".jpg", ".png")) for p, _ in index.train)


def test_empty_class_is_named(tmp_path):
    make_class_folder(tmp_path, {"full": 3})
    (tmp_path / "empty_one").mkdir()
    (tmp_path / "empty_one" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetLayoutError, match="empty_one"):
        index_folder(tmp_path)


def test_class_too_small_to_split(tmp_path):
    make_class_folder(tmp_path, {"many": 5, "lonely": 1})
    with pytest.raises(DatasetLayoutError, match=r"lonely \(1\)"):
        index_folder(tmp_path)


def test_val_classes_must_match_train(tmp_path):
    make_class_folder(tmp_path / "train", {"a": 2, "b": 2})
    make_class_folder(tmp_path / "val", {"a": 1, "c": 1})
    with pytest.raises(DatasetLayoutError, match=r"only in train: \['b'\].*only in val: \['c'\]"):
        index_folder(tmp_path)


def test_missing_root_and_no_classes(tmp_path):
    with pytest.raises(DatasetLayoutError, match="is not a folder"):
        index_folder(tmp_path / "nope")
    (tmp_path / "flat.jpg").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match="no class subfolders"):
        index_folder(tmp_path)


def test_folder_source_requires_root():
    source = {"_target_": "trainer.data.sources.folder.folder_source", "_partial_": True}
    cfg = OmegaConf.create({"source": source, "root": "???", "val_fraction": 0.2, "split_seed": 0})
    with pytest.raises(DatasetLayoutError, match="dataset.root"):
        build_index(cfg)


def _with_broken_files(tmp_path):
    make_class_folder(tmp_path / "train", {"a": 3, "b": 3})
    make_class_folder(tmp_path / "val", {"a": 1, "b": 1})
    (tmp_path / "train" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = (tmp_path / "train" / "b" / "img_0.jpg").read_bytes()
    (tmp_path / "train" / "b" / "cut.jpg").write_bytes(good[: len(good) // 3])
    return index_folder(tmp_path)


def test_scan_skips_and_lists_unreadable_images(tmp_path, caplog):
    index = _with_broken_files(tmp_path)
    assert len(index.train) == 8
    bad = drop_bad_images(index, "skip")
    assert sorted(p.rsplit("/", 1)[1] for p in bad) == ["broken.jpg", "cut.jpg"]
    assert len(index.train) == 6
    assert "broken.jpg" in caplog.text and "cut.jpg" in caplog.text


def test_scan_error_mode_stops_before_training(tmp_path):
    index = _with_broken_files(tmp_path)
    with pytest.raises(BadImagesError, match=r"broken\.jpg.*\n.*cut\.jpg|cut\.jpg.*\n.*broken\.jpg"):
        drop_bad_images(index, "error")


def test_scan_verdicts_are_cached_until_a_file_changes(tmp_path, monkeypatch):
    index = _with_broken_files(tmp_path)
    drop_bad_images(index, "skip")
    import trainer.data.scan as scan

    calls = []
    monkeypatch.setattr(scan, "inspect_file", lambda p: calls.append(p) or {"error": None})
    fresh = index_folder(tmp_path)
    assert len(drop_bad_images(fresh, "skip")) == 2 and calls == []  # from cache
    class_image(0).save(tmp_path / "train" / "a" / "new.jpg")
    drop_bad_images(index_folder(tmp_path), "skip")
    assert calls  # a changed folder is rescanned


def test_a_class_left_empty_by_bad_images_stops(tmp_path):
    make_class_folder(tmp_path / "train", {"a": 2, "b": 2})
    make_class_folder(tmp_path / "val", {"a": 1, "b": 1})
    (tmp_path / "val" / "b" / "img_0.jpg").write_bytes(b"garbage")
    with pytest.raises(BadImagesError, match="val split has no images of: b"):
        drop_bad_images(index_folder(tmp_path), "skip")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_named_like_an_image_is_skipped_not_opened(tmp_path, caplog):
    make_class_folder(tmp_path / "train", {"a": 2, "b": 2})
    make_class_folder(tmp_path / "val", {"a": 1, "b": 1})
    os.mkfifo(tmp_path / "train" / "a" / "pipe.jpg")  # opening it for reading would block forever
    os.symlink("/dev/zero", tmp_path / "train" / "b" / "zero.png")
    index = index_folder(tmp_path)
    bad = drop_bad_images(index, "skip")
    assert sorted(Path(p).name for p in bad) == ["pipe.jpg", "zero.png"]
    assert "FIFO" in bad[str(tmp_path / "train" / "a" / "pipe.jpg")]
    assert "character device" in bad[str(tmp_path / "train" / "b" / "zero.png")]
    assert len(index.train) == 4 and "pipe.jpg" in caplog.text


def test_a_decode_that_never_ends_is_cut_off():
    release = threading.Event()

    def decode(item: str) -> str:
        if item == "stuck":
            release.wait()  # a decode that hangs (until the test ends)
        return f"decoded {item}"

    try:
        results = map_with_time_limit(decode, ["a", "stuck", "b", "c"], 2, limit_s=1.0, timed_out="late")
    finally:
        release.set()
    assert results == ["decoded a", "late", "decoded b", "decoded c"]
