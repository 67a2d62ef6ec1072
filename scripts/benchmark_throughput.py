"""Is training at the hardware's bound? Training throughputs measured in one run, interleaved, as ratios.

  python scripts/benchmark_throughput.py dataset=folder dataset.root=DIR model=mobilenet_v2 \
      dataset.image_size=128 [--repeats 3] [--steps 8]

1. bound: the real Lightning training loop (same module, memory format and precision as `train.py`) fed
   batches that are already decoded, augmented and in memory: what the model alone sustains;
2. end-to-end: the same loop reading the real images through the training DataLoader;
3. plain: torchvision's transfer-learning recipe on the same images (ImageFolder, torchvision transforms,
   DataLoader with the same workers, hand-written loop, NCHW fp32), as people usually start;
4. loader-only: the training DataLoader alone, no model.
Each repeat runs all four back to back; figures are medians over repeats, so a busy machine slows them alike.
end-to-end / bound near 1.0 means no time is lost to data loading.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from trainer.cli import compose_config
from trainer.data.datamodule import ImageDataModule
from trainer.models import build_classifier
from trainer.training.module import ClassifierModule
from trainer.training.plain_recipe import split_folder_root, train_plain
from trainer.training.run import build_run, build_trainer
from trainer.training.threads import apply_cpu_threads


def load() -> float:
    """The machine's 1-minute load average (other processes compete for the same cores)."""
    return float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").exists() else -1.0


class InMemoryBatches:
    """Batches already decoded and augmented: iterating them costs nothing (Lightning needs an iterable)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def fit_throughput(cfg, module: ClassifierModule, out: str, train_data, steps: int) -> tuple[float, str]:
    """Images/s of one epoch of `steps` Lightning training steps over `train_data` (no validation)."""
    trainer, meter, _ = build_trainer(cfg, out, max_epochs=1, limit_train_batches=steps, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=train_data)
    return meter.images_per_sec, str(trainer.precision)


def loader_only(datamodule: ImageDataModule, steps: int) -> float:
    images, start = 0, time.perf_counter()
    for i, (x, _) in enumerate(datamodule.train_dataloader()):
        images += len(x)
        if i + 1 == steps:
            break
    return images / (time.perf_counter() - start)


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (median reported)")
    parser.add_argument("--steps", type=int, default=8, help="training steps per measurement")
    parser.add_argument("overrides", nargs="*", help="train.py overrides")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as out:
        # training steps only: the linear probe before the first step is not one (and would rerun per fit)
        settings = ["export.enabled=false", "~logger", "finetune.linear_probe=false"]
        cfg = compose_config([*args.overrides, *settings], output_dir=out)
        apply_cpu_threads(cfg)
        run = build_run(cfg)
        index, datamodule, module = run.index, run.datamodule, run.module
        steps = max(2, min(args.steps, len(index.train) // datamodule.batch_size))
        start = time.perf_counter()
        cached = datamodule.decoded("train") is not None  # dataset.cache: decode once, before training
        decode_once = time.perf_counter() - start
        in_memory = InMemoryBatches(list(itertools.islice(datamodule.train_dataloader(), steps)))
        plain_model = build_classifier(cfg.model, index.num_classes).model
        root = split_folder_root(index)
        fit_throughput(cfg, module, out, in_memory, steps)  # warm-up: one-time kernel selection, allocations
        figures: dict[str, list[float]] = {k: [] for k in ("bound", "end_to_end", "plain", "loader", "load")}
        for _ in range(args.repeats):
            figures["load"].append(load())
            bound, precision = fit_throughput(cfg, module, out, in_memory, steps)
            figures["bound"].append(bound)
            figures["end_to_end"].append(
                fit_throughput(cfg, module, out, datamodule.train_dataloader(), steps)[0]
            )
            plain = train_plain(
                plain_model,
                root,
                datamodule.image_size,
                1,
                datamodule.batch_size,
                datamodule.num_workers,
                steps,
            )
            figures["plain"].append(plain.images_per_sec)
            figures["loader"].append(loader_only(datamodule, steps))
    result = {
        "model": cfg.model.name,
        "image_size": datamodule.image_size,
        "batch_size": datamodule.batch_size,
        "num_workers": datamodule.num_workers,
        "torch_threads": torch.get_num_threads(),
        "precision": precision,
        "memory_format": str(run.memory_format).removeprefix("torch."),
        "steps": steps,
        "cache": cached,
        "decode_once_seconds": decode_once if cached else None,
        "repeats": args.repeats,
        **{f"{k}_images_per_sec": statistics.median(v) for k, v in figures.items() if k != "load"},
        "per_repeat": figures,
    }
    bound = result["bound_images_per_sec"]
    for key in ("end_to_end", "plain", "loader"):
        result[f"{key}_over_bound"] = result[f"{key}_images_per_sec"] / bound
    result["end_to_end_over_plain"] = result["end_to_end_images_per_sec"] / result["plain_images_per_sec"]
    return result


if __name__ == "__main__":
    res = main(sys.argv[1:])
    print(json.dumps(res, indent=2))
    print(
        f"\nbound {res['bound_images_per_sec']:.1f} img/s ({res['memory_format']}, {res['precision']}), "
        f"load {statistics.median(res['per_repeat']['load']):.1f}\n"
        f"end-to-end / bound = {res['end_to_end_over_bound']:.2f}x  (1.0 = no time lost to data loading)\n"
        f"plain recipe / bound = {res['plain_over_bound']:.2f}x, end-to-end / plain = "
        f"{res['end_to_end_over_plain']:.2f}x\n"
        f"loader / bound = {res['loader_over_bound']:.2f}x  (>1: the loader alone outruns the model)"
    )
    if res["cache"]:
        print(f"decoding the training images once took {res['decode_once_seconds']:.1f} s (dataset.cache)")
