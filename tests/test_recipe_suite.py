"""The defaults against the plain recipe on a suite set they were not chosen on (needs ../shared)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import SHARED

from trainer.reports.recipe_tables import wilson

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_tv.pth"
# docs/recipes.md: the defaults were chosen on the whole suite, so no set is strictly unseen. trashnet
# (everyday objects, 6 classes) decided nothing (chest_xray and plantvillage_leaves did): every candidate
# scored above plain there.
HELD_OUT = SHARED / "data" / "trashnet"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (WEIGHTS.exists() and HELD_OUT.exists()), reason="../shared is not present"),
]


def test_defaults_are_not_below_the_plain_recipe_on_a_held_out_set() -> None:
    spec = importlib.util.spec_from_file_location("compare_recipes", ROOT / "scripts" / "compare_recipes.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    base = ["dataset=folder", f"dataset.root={HELD_OUT}", "model=mobilenet_v2", f"model.pretrained={WEIGHTS}"]
    # The screening budget of docs/recipes.md: 50 train photos per class, 128 px, 3 epochs, seed 0.
    defaults, plain = (script.run_recipe(r, base, 128, 3, 0, None, 50) for r in ("defaults", "plain"))
    n = plain["val_images"]
    low, _ = wilson(plain["val_top1"] * n, n)
    assert defaults["val_top1"] >= low, (defaults["val_top1"], plain["val_top1"], low)
