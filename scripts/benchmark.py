"""Params, MACs, CPU latency, FPS, peak memory and file sizes of a backbone, a checkpoint or an export folder.

    python scripts/benchmark.py model=mobilenet_v1 model.alpha=0.25 model.num_classes=1000 \
        model.pretrained=false dataset.image_size=224
    python scripts/benchmark.py ckpt=outputs/<run>/checkpoints/best.ckpt
    python scripts/benchmark.py artifacts=outputs/<run>/export

Writes benchmark.json in its Hydra run directory. Same as the `trainer-benchmark` command.
"""

from trainer.cli import benchmark

if __name__ == "__main__":
    benchmark()
