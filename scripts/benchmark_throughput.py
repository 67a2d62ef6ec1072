"""Does data loading starve the model? Three training throughputs measured in one run, reported as ratios.

  python scripts/benchmark_throughput.py dataset=folder dataset.root=DIR model=mobilenet_v2 \
      dataset.image_size=160

1. model-only: train steps (forward, backward, optimizer) on in-memory tensors: the upper bound;
2. loader-only: the training DataLoader over the real images, no model;
3. end-to-end: the real Lightning training loop (data loading included), as `train.py` runs it.
end-to-end / model-only near 1.0 means the loader keeps up; loader / model-only must stay above 1.0.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import torch

from trainer.cli import compose_config
from trainer.data.data_config import DataConfig
from trainer.data.datamodule import ImageDataModule
from trainer.data.index import build_index
from trainer.models import build_backbone
from trainer.training.module import ClassifierModule
from trainer.training.run import apply_cpu_threads, build_trainer


def model_only(module: ClassifierModule, batch_size: int, image_size: int, steps: int) -> float:
    opt = torch.optim.AdamW(module.model.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 3, image_size, image_size)
    y = torch.randint(0, len(module.classes), (batch_size,))
    module.model.train()
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(module.model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return batch_size * steps / (time.perf_counter() - start)


def loader_only(datamodule: ImageDataModule, steps: int) -> float:
    images, start = 0, None
    for i, (x, _) in enumerate(datamodule.train_dataloader()):
        if i == 1:  # the first batch pays for worker start-up, as in every epoch of a real run
            start, images = time.perf_counter(), 0
        images += len(x)
        if i == steps:
            break
    return images / (time.perf_counter() - start)


def main(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_config([*overrides, "export.enabled=false", "~logger"], output_dir=out)
        apply_cpu_threads(cfg)
        index = build_index(cfg.dataset)
        backbone = build_backbone(cfg.model, index.num_classes)
        data_config = DataConfig.resolve(backbone.data_config, int(cfg.dataset.image_size))
        datamodule = ImageDataModule.from_config(index, data_config, cfg)
        module = ClassifierModule(backbone, index.classes, cfg.optim, cfg.augment, cfg.finetune)
        steps = max(2, min(30, len(index.train) // datamodule.batch_size - 1))
        result = {
            "model": cfg.model.name,
            "image_size": datamodule.image_size,
            "batch_size": datamodule.batch_size,
            "num_workers": datamodule.num_workers,
            "torch_threads": torch.get_num_threads(),
            "model_only_images_per_sec": model_only(
                module, datamodule.batch_size, datamodule.image_size, steps
            ),
            "loader_only_images_per_sec": loader_only(datamodule, steps),
        }
        trainer, meter, _ = build_trainer(cfg, out, max_epochs=2, limit_val_batches=0)
        trainer.fit(module, datamodule=datamodule)
        result["end_to_end_images_per_sec"] = meter.images_per_sec
    bound = result["model_only_images_per_sec"]
    result["loader_over_model"] = result["loader_only_images_per_sec"] / bound
    result["end_to_end_over_model"] = result["end_to_end_images_per_sec"] / bound
    return result


if __name__ == "__main__":
    res = main(sys.argv[1:])
    print(json.dumps(res, indent=2))
    print(
        f"\nloader / model-only = {res['loader_over_model']:.2f}x  (>1: the loader can feed the model)\n"
        f"end-to-end / model-only = {res['end_to_end_over_model']:.2f}x  (1.0 = no time lost to data loading)"
    )
