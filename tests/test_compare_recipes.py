"""scripts/compare_recipes.py: a fresh split per seed from the pooled photos, and the table of what ran."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("compare_recipes", ROOT / "scripts" / "compare_recipes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _photos(root: Path) -> dict[str, set[str]]:
    """Class name -> the real files of its photos (through the links)."""
    return {c.name: {str(p.resolve()) for p in c.iterdir()} for c in sorted(root.iterdir()) if c.is_dir()}


def test_resplit_pools_train_and_val_and_splits_them_anew_per_seed(tmp_path: Path, tiny_folder: Path) -> None:
    resplit = _script().resplit_folder
    splits = [resplit(tiny_folder, 0.5, seed, tmp_path / f"{i}") for i, seed in enumerate((0, 0, 1))]
    train, val = _photos(tiny_folder / "train"), _photos(tiny_folder / "val")
    pooled = {c: train[c] | val[c] for c in train}
    for split in splits:
        train, val = _photos(split / "train"), _photos(split / "val")
        for c in ("red", "green", "blue"):
            assert not train[c] & val[c]  # no photo on both sides
            assert len(val[c]) == 8  # half of 12 + 4, stratified
        assert all(train[c] | val[c] == pooled[c] for c in pooled)  # every photo, once
    assert _photos(splits[0] / "val") == _photos(splits[1] / "val")  # a seed is a split
    assert _photos(splits[0] / "val") != _photos(splits[2] / "val")


def test_recipes_run_beside_the_plain_recipe_and_tabulate(tmp_path: Path, tiny_folder: Path) -> None:
    out = tmp_path / "results.jsonl"
    base = ["dataset=folder", f"dataset.root={tiny_folder}", "model=demo", "model.alpha=0.25"]
    base += ["dataset.batch_size=8"]
    run = [sys.executable, str(ROOT / "scripts" / "compare_recipes.py"), "--out", str(out)]
    args = [
        "--sizes",
        "32",
        "--epochs",
        "1",
        "--resplit",
        "0.5",
        "--recipes",
        "defaults",
        "plain",
        "--",
        *base,
    ]
    subprocess.run([*run, *args], check=True, capture_output=True, cwd=tmp_path)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["recipe"], r["resplit"], r["base"]) for r in rows] == [
        ("defaults", 0.5, base),
        ("plain", 0.5, base),
    ]
    assert all(0 <= r["val_top1"] <= 1 and len(r["val_top1_per_epoch"]) == 1 for r in rows)
    subprocess.run([*run, *args], check=True, capture_output=True, cwd=tmp_path)  # done: nothing re-runs
    assert len(out.read_text().splitlines()) == 2
    table = subprocess.run([*run, "--table"], check=True, capture_output=True, text=True).stdout
    assert "| photos (resplit 0.5) | demo | 32 | 1 | defaults |" in table
    assert "| photos (resplit 0.5) | demo | 32 | 1 | plain |" in table
