"""scripts/compare_recipes.py: a fresh split per seed from the pooled photos, and the table of what ran."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_class_folder

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


@pytest.mark.slow
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
    assert "**demo, 32 px, 1 epochs, train photos per class: all, resplit: 0.5**" in table
    assert "| photo set | plain | defaults |" in table
    assert table.count("| photos | ") == 1


def test_subsample_keeps_every_kth_train_photo_by_name_and_all_val(tmp_path: Path, tiny_folder: Path) -> None:
    subsample = _script().subsample_folder
    first, again = (subsample(tiny_folder, 5, tmp_path / name) for name in ("a", "b"))
    for c in ("red", "green", "blue"):
        names = sorted(p.name for p in (tiny_folder / "train" / c).iterdir())
        kept = sorted(p.resolve().name for p in (first / "train" / c).iterdir())
        assert kept == sorted(names[0:10:2])  # 12 // 5 = every 2nd, the first 5 of them
    assert _photos(first / "train") == _photos(again / "train")  # deterministic
    assert _photos(first / "val") == _photos(tiny_folder / "val")


@pytest.mark.slow
def test_suite_runs_every_recipe_on_every_set_once(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    for name, classes in (("cats", {"a": 8, "b": 8}), ("dogs", {"a": 8, "b": 8, "c": 8})):
        make_class_folder(suite / name / "train", classes)
        make_class_folder(suite / name / "val", {c: 3 for c in classes})
    (suite / "notes").mkdir()  # no train/ + val/: not a set
    out = tmp_path / "results.jsonl"
    run = [sys.executable, str(ROOT / "scripts" / "compare_recipes.py"), "--out", str(out)]
    args = ["--suite", str(suite), "--max-train-per-class", "4", "--sizes", "32", "--epochs", "1"]
    args += ["--recipes", "defaults", "plain", "--", "model=demo", "model.alpha=0.25", "dataset.batch_size=4"]
    subprocess.run([*run, *args], check=True, capture_output=True, cwd=tmp_path)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    roots = [next(o for o in r["base"] if o.startswith("dataset.root=")) for r in rows]
    assert [(r["recipe"], Path(root).name) for r, root in zip(rows, roots, strict=True)] == [
        ("defaults", "cats"),
        ("plain", "cats"),
        ("defaults", "dogs"),
        ("plain", "dogs"),
    ]
    assert all(r["max_train_per_class"] == 4 and r["val_images"] in (6, 9) for r in rows)
    subprocess.run([*run, *args], check=True, capture_output=True, cwd=tmp_path)  # done: nothing re-runs
    assert len(out.read_text().splitlines()) == 4
    # Two worker processes run the same jobs to the same scores (seeded, one thread each), in any order.
    parallel = tmp_path / "parallel.jsonl"
    both = [*run[:-1], str(parallel), "--workers", "2", *args]
    subprocess.run(both, check=True, capture_output=True, cwd=tmp_path)
    again = [json.loads(line) for line in parallel.read_text().splitlines()]
    assert sorted(_scores(again)) == sorted(_scores(rows))
    table = subprocess.run([*run, "--table"], check=True, capture_output=True, text=True).stdout
    assert "train photos per class: 4" in table
    assert "| cats | " in table and "| dogs | " in table and "| mean over 2 sets | " in table


def _scores(rows: list[dict]) -> list[tuple[str, str, float]]:
    """(recipe, photo set, val top-1) of each suite row; the set is its dataset.root's folder name."""
    return [(r["recipe"], Path(r["base"][-1]).name, r["val_top1"]) for r in rows]


def _rows(top1: dict[str, dict[str, float]]) -> list[dict]:
    return [
        {"recipe": recipe, "base": ["model=m", f"dataset.root=/s/{data}"], "image_size": 128, "epochs": 3}
        | {"seed": 0, "val_top1": v, "val_images": 100}
        for recipe, by_set in top1.items()
        for data, v in by_set.items()
    ]


def test_suite_table_means_ranks_and_wins_against_plain() -> None:
    from trainer.reports.recipe_tables import suite_table

    table = suite_table(
        _rows({"plain": {"a": 0.5, "b": 0.8}, "x": {"a": 0.9, "b": 0.79}, "y": {"a": 0.5, "b": 0.6}})
    )
    lines = table.splitlines()
    assert lines[2] == "| photo set | plain | x | y |"  # plain first, then by mean
    assert lines[4] == "| a | 50.0 ±9.6 | 90.0 ±6.0 | 50.0 ±9.6 |"
    assert lines[6] == "| mean over 2 sets | 65.0 | 84.5 | 55.0 |"
    assert lines[7] == "| average rank | 1.8 | 1.5 | 2.8 |"  # a tie shares its ranks: 1.75 and 2.75
    assert lines[8] == "| vs plain: wins/ties/losses |  | 1/1/0 | 0/1/1 |"


def test_suite_table_means_only_over_sets_every_recipe_ran_on() -> None:
    from trainer.reports.recipe_tables import suite_table

    table = suite_table(_rows({"plain": {"a": 0.5, "b": 0.8}, "x": {"a": 0.7}}))
    assert "| b | 80.0 ±7.8 |  |" in table
    assert "| mean over 1 sets | 50.0 | 70.0 |" in table
