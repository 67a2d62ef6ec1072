"""Compare fine-tuning recipes at small budgets, beside the plain torchvision recipe, on the same split.

  python scripts/compare_recipes.py --out docs/recipes.jsonl --sizes 128 --epochs 3 --seeds 0 1 2 \
      --resplit 0.5 --recipes defaults no_linear_probe plain -- dataset=folder \
      dataset.root=../shared/data/hymenoptera \
      model=mobilenet_v2 model.pretrained=../shared/weights/mobilenet_v2_imagenet_tv.pth
  python scripts/compare_recipes.py --out docs/recipes.jsonl --table     # the markdown table of what ran

Each run is `train.py` with the recipe's overrides (one thread, in-process loading, fixed seed, no export),
scored by val top-1 after the last epoch (no picking the best epoch on val). With `--resplit F` each seed
also draws a new stratified split of the folder's photos (a fraction F for val), and every recipe of that
seed trains on it. Results append to `--out` as JSON lines, so an interrupted comparison resumes where it
stopped. The 95% interval is Wilson's, over every val prediction of the recipe's seeds.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import multiprocessing
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import lightning as L
import torch

from trainer.cli import compose_config
from trainer.data.index import build_index
from trainer.data.sources.folder import index_class_folders, stratified_split
from trainer.models import build_classifier
from trainer.reports.recipe_tables import override, suite_table
from trainer.training.plain_recipe import split_folder_root, train_plain
from trainer.training.run import train


def probed(changes: dict[str, str]) -> list[str]:
    """LP-FT with BatchNorm frozen (the `lp+freeze_bn` family) and `changes`, every setting spelled out, so
    a recipe's rows keep their meaning when the defaults in conf/ move."""
    settings = {
        "finetune.linear_probe": "true",
        "finetune.freeze_bn": "true",
        "finetune.probed_lr_mult": "0.3",
        "finetune.backbone_lr_mult": "0.2",
    }
    return [f"{key}={value}" for key, value in (settings | changes).items()]


# Overrides of the defaults in conf/. `plain*` is torchvision's tutorial (trainer.training.plain_recipe), at
# our batch size and at the tutorial's 4 (which leaves BatchNorm with 4-image statistics).
RECIPES: dict[str, list[str]] = {
    "defaults": [],
    "plain": [],
    # Earlier defaults, spelled out: before the linear probe (c787122), and LP-FT as it shipped (81bcd53).
    "old_defaults": [
        "finetune.linear_probe=false",
        "finetune.backbone_lr_mult=0.2",
        "finetune.freeze_bn=false",
    ],
    "lp_ft": [
        "finetune.linear_probe=true",
        "finetune.probed_lr_mult=0.3",
        "finetune.backbone_lr_mult=0.2",
        "finetune.freeze_bn=false",
    ],
    "no_lp+backbone_lr_1.0": [
        "finetune.linear_probe=false",
        "finetune.backbone_lr_mult=1.0",
        "finetune.freeze_bn=false",
    ],
    "no_lp+backbone_lr_1.0+scale_0.35": [
        "finetune.linear_probe=false",
        "finetune.backbone_lr_mult=1.0",
        "augment.scale=[0.35,1.0]",
    ],
    "lp+freeze_bn+fp32": probed({"trainer.precision": "32-true", "memory_format": "contiguous"}),
    "lp+freeze_bn+no_smoothing": probed({"augment.label_smoothing": "0.0"}),
    "lp+freeze_bn+lr_x1": probed({"finetune.probed_lr_mult": "1.0"}),
    "lp+freeze_bn+lr_x0.6": probed({"finetune.probed_lr_mult": "0.6"}),
    "lp+freeze_bn+backbone_lr_0.5": probed({"finetune.backbone_lr_mult": "0.5"}),
    "lp+freeze_bn+lr_x1+ema_0.9": probed({"finetune.probed_lr_mult": "1.0", "finetune.ema_decay": "0.9"}),
    "lp+freeze_bn+lr_x1+backbone_lr_1.0": probed(
        {"finetune.probed_lr_mult": "1.0", "finetune.backbone_lr_mult": "1.0"}
    ),
    "lp+lr_x1+backbone_lr_1.0": [
        "finetune.probed_lr_mult=1.0",
        "finetune.backbone_lr_mult=1.0",
        "finetune.freeze_bn=false",
    ],
    "plain_b4": ["dataset.batch_size=4"],
    "scale_0.25": ["augment.scale=[0.25,1.0]"],
    "scale_0.35": ["augment.scale=[0.35,1.0]"],
    "scale_0.5": ["augment.scale=[0.5,1.0]"],
    "scale_0.08": ["augment.scale=[0.08,1.0]"],
    "no_smoothing": ["augment.label_smoothing=0.0"],
    "smoothing_0.1": ["augment.label_smoothing=0.1"],
    "no_warmup": ["optim.warmup_epochs=0"],
    "warmup_1": ["optim.warmup_epochs=1"],
    "head_first_1": ["finetune.freeze_epochs=1"],
    "backbone_lr_1.0": ["finetune.backbone_lr_mult=1.0"],
    "backbone_lr_0.5": ["finetune.backbone_lr_mult=0.5"],
    "backbone_lr_0.2": ["finetune.backbone_lr_mult=0.2"],
    "backbone_lr_0.1": ["finetune.backbone_lr_mult=0.1"],
    "freeze_bn": ["finetune.freeze_bn=true"],
    "lr_3e-3": ["optim.lr=3e-3"],
    "lr_5e-4": ["optim.lr=5e-4"],
    "no_linear_probe+lr_3e-4": ["finetune.linear_probe=false", "optim.lr=3e-4"],
    "dropout_0": ["model.dropout=0.0"],
    "dropout_0.5": ["model.dropout=0.5"],
    "color_jitter": ["augment.color_jitter=0.4"],
    "randaugment": ["augment=randaugment"],
    "batch_16": ["dataset.batch_size=16"],
    "sgd": ["optim=sgd"],
    "layer_decay_0.8": ["finetune.layer_decay=0.8"],
    "backbone_lr_0.2+layer_decay_0.8": ["finetune.backbone_lr_mult=0.2", "finetune.layer_decay=0.8"],
    "backbone_lr_0.2+scale_0.35": ["finetune.backbone_lr_mult=0.2", "augment.scale=[0.35,1.0]"],
    "ema_0.9": ["finetune.ema_decay=0.9"],
    "fp32": ["trainer.precision=32-true", "memory_format=contiguous"],
    "no_linear_probe": ["finetune.linear_probe=false"],
    "lp+lr_x1": ["finetune.probed_lr_mult=1.0"],
    "lp+lr_x0.5": ["finetune.probed_lr_mult=0.5"],
    "lp+lr_x0.1": ["finetune.probed_lr_mult=0.1"],
    "lp+backbone_lr_0.5": ["finetune.backbone_lr_mult=0.5"],
    "lp+freeze_bn": probed({}),
    "lp+no_smoothing": ["augment.label_smoothing=0.0"],
    "lp+scale_0.35": ["augment.scale=[0.35,1.0]"],
}


def top1_per_epoch(run_dir: Path, epochs: int) -> list[float]:
    """val/top1 after each epoch, from the CSV log (its last line re-validates the best checkpoint)."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [float(row["val/top1"]) for row in csv.DictReader(f) if row.get("val/top1")][:epochs]


def resplit_folder(root: Path, val_fraction: float, seed: int, out: Path) -> Path:
    """OUT/train/<class>/ + OUT/val/<class>/ (symlinks): ROOT's train and val photos pooled per class and
    split again, stratified, by `seed`. One fixed val split of a small photo set is a noisy yardstick;
    seeds that are also new splits average that noise out."""
    pooled: dict[str, list[str]] = defaultdict(list)
    for part in ("train", "val"):
        for name, paths in index_class_folders(root / part).items():
            pooled[name] += paths
    train, val = stratified_split(pooled, val_fraction, seed, root)
    classes = sorted(pooled)
    for part, samples in (("train", train), ("val", val)):
        for i, (path, label) in enumerate(samples):
            link = out / part / classes[label] / f"{i:05d}_{Path(path).name}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(path).resolve())
    return out


def subsample_folder(root: Path, per_class: int, out: Path) -> Path:
    """OUT/train/<class>/ (at most `per_class` photos: every k-th of the sorted names, k = count // per_class)
    + OUT/val/<class>/ (all), as symlinks. Deterministic, so every recipe screens on the same photos."""
    for part in ("train", "val"):
        for name, paths in index_class_folders(root / part).items():
            paths = sorted(paths)
            if part == "train":
                paths = paths[:: max(1, len(paths) // per_class)][:per_class]
            for i, path in enumerate(paths):
                link = out / part / name / f"{i:05d}_{Path(path).name}"
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(Path(path).resolve())
    return out


def suite_sets(suite: Path, names: list[str] | None = None) -> list[Path]:
    """The photo sets of a suite folder: each sub-folder with train/ and val/, by name (only `names`)."""
    sets = sorted(d for d in suite.iterdir() if (d / "train").is_dir() and (d / "val").is_dir())
    if not sets:
        raise SystemExit(f"--suite {suite}: no <set>/train/ + <set>/val/ folders in it; point it at a suite")
    unknown = sorted(set(names or []) - {d.name for d in sets})
    if unknown:
        have = " ".join(d.name for d in sets)
        raise SystemExit(f"--sets {' '.join(unknown)}: not in --suite {suite}; pick from: {have}")
    return [d for d in sets if not names or d.name in names]


def run_recipe(
    name: str,
    base: list[str],
    size: int,
    epochs: int,
    seed: int,
    resplit: float | None,
    per_class: int | None = None,
) -> dict:
    given = base
    with tempfile.TemporaryDirectory() as split:
        root = Path(override(base, "dataset.root", ""))
        if resplit:
            root = resplit_folder(root, resplit, seed, Path(split) / "resplit")
        if per_class:
            root = subsample_folder(root, per_class, Path(split) / "subsample")
        if resplit or per_class:
            base = [o for o in base if not o.startswith("dataset.root=")] + [f"dataset.root={root}"]
        start = time.perf_counter()
        row = run_in(name, base, size, epochs, seed)
    seconds = round(time.perf_counter() - start, 1)
    return {**row, "base": given, "resplit": resplit, "max_train_per_class": per_class, "seconds": seconds}


def run_job(job: tuple) -> dict:
    """One recipe run in a worker process; a failure comes back as a row with `error` (the others go on)."""
    try:
        return run_recipe(*job)
    except Exception as e:  # noqa: BLE001 - one broken run must not end a suite of hundreds
        return {"recipe": job[0], "base": job[1], "seed": job[4], "error": f"{type(e).__name__}: {e}"}


def run_jobs(jobs: list[tuple], workers: int, out: Path) -> None:
    """Run `jobs` (one process per worker, each taking the next job; rows in the order they finish) and
    append each finished row to `out`, so a stopped suite resumes where it was."""
    with ExitStack() as stack:
        spawn = multiprocessing.get_context("spawn")
        pool = stack.enter_context(spawn.Pool(workers)) if workers > 1 else None
        for row in pool.imap_unordered(run_job, jobs) if pool else map(run_job, jobs):
            print(json.dumps(row), flush=True)
            if "error" not in row:
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")


def run_in(name: str, base: list[str], size: int, epochs: int, seed: int) -> dict:
    common = [*base, f"dataset.image_size={size}", f"trainer.max_epochs={epochs}", f"seed={seed}"]
    common += ["threads=1", "dataset.num_workers=0", "export.enabled=false", "logger=csv"]
    with tempfile.TemporaryDirectory() as out:
        if name.startswith("plain"):
            cfg = compose_config([*common, *RECIPES[name]], output_dir=out)
            torch.set_num_threads(1)
            L.seed_everything(seed, workers=True)
            index = build_index(cfg.dataset)
            root = split_folder_root(index)
            model = build_classifier(cfg.model, index.num_classes).model
            device = "cuda" if cfg.trainer.accelerator == "gpu" else "cpu"
            batch = int(cfg.dataset.batch_size)
            result = train_plain(model, root, size, epochs, batch_size=batch, device=device)
            per_epoch, images_per_sec, val_images = (
                result.val_top1_per_epoch,
                result.images_per_sec,
                len(index.val),
            )
        else:
            metrics = train(compose_config([*common, *RECIPES[name]], output_dir=out))
            per_epoch = top1_per_epoch(Path(out), epochs)
            images_per_sec, val_images = metrics["train_images_per_sec"], metrics["val_images"]
    return {
        "recipe": name,
        "overrides": RECIPES[name],
        "base": base,
        "image_size": size,
        "epochs": epochs,
        "seed": seed,
        "val_top1": per_epoch[-1],
        "val_top1_per_epoch": per_epoch,
        "val_images": val_images,
        "train_images_per_sec": images_per_sec,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines results file (appended)")
    parser.add_argument("--recipes", nargs="+", default=["defaults", "plain"], choices=sorted(RECIPES))
    parser.add_argument("--sizes", nargs="+", type=int, default=[128])
    parser.add_argument("--epochs", nargs="+", type=int, default=[3])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--resplit",
        type=float,
        metavar="VAL_FRACTION",
        help="pool dataset.root's train and val photos and split them anew for each seed",
    )
    parser.add_argument(
        "--suite",
        type=Path,
        metavar="DIR",
        help="run every recipe on every DIR/<set>/{train,val}/ (dataset.root is set per set)",
    )
    parser.add_argument("--sets", nargs="+", metavar="NAME", help="with --suite: only these sets")
    parser.add_argument(
        "--max-train-per-class",
        type=int,
        metavar="N",
        help="screen on at most N train photos per class (every k-th by name); val stays whole",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs at a time, one process each (one CPU thread each; with trainer=gpu they share the GPU)",
    )
    parser.add_argument("--table", action="store_true", help="print the table of --out and stop")
    parser.add_argument("base", nargs="*", help="train.py overrides shared by every recipe")
    args = parser.parse_args(argv)
    done = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    if args.table:
        print(suite_table(done))
        return
    key = ("recipe", "base", "image_size", "epochs", "seed", "resplit", "max_train_per_class")
    seen = {tuple(json.dumps(r.get(k)) for k in key) for r in done}
    bases = [args.base]
    if args.suite:
        shared = [o for o in args.base if not o.startswith(("dataset=", "dataset.root="))]
        bases = [[*shared, "dataset=folder", f"dataset.root={d}"] for d in suite_sets(args.suite, args.sets)]
    jobs = [
        (name, base, size, epochs, seed, args.resplit, args.max_train_per_class)
        for size, epochs, seed, base, name in itertools.product(
            args.sizes, args.epochs, args.seeds, bases, args.recipes
        )
    ]
    run_jobs([j for j in jobs if tuple(json.dumps(v) for v in j) not in seen], args.workers, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
