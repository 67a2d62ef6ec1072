"""Callbacks: head-first fine-tuning, training throughput, and the end-of-training evaluation artifacts."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import get_ema_avg_fn

from trainer.training.linear_probe import LinearProbeHead
from trainer.utils.files import atomic_output, write_json


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary name and rename, so a crash never leaves a truncated .ckpt; read them
    without executing pickle code, whatever the caller or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD asks for."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_output(Path(path)) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return super().load_checkpoint(path, map_location=map_location or "cpu", weights_only=True)


class FinetuneSchedule(L.Callback):
    """Train only the head for `freeze_epochs`, then everything; optionally keep BatchNorm frozen throughout.

    Frozen BatchNorm layers are kept in eval mode so they use the pretrained running statistics, which is
    what the head will see at inference time (Lightning's BaseFinetuning switches them to batch statistics).
    `freeze_bn="probed"` freezes them when the run starts from a head fitted by the linear probe: that head
    was fitted on features under the pretrained statistics, and statistics re-estimated from augmented train
    batches moved the features under it (val top-1 fell from the first epoch to the last on all 8 suite sets,
    docs/recipes.md).
    """

    def __init__(self, freeze_epochs: int = 0, freeze_bn: bool | str = False) -> None:
        self.freeze_epochs = int(freeze_epochs)
        self.freeze_bn = freeze_bn

    def bn_frozen(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        if self.freeze_bn != "probed":
            return bool(self.freeze_bn)
        probes = (c for c in trainer.callbacks if isinstance(c, LinearProbeHead))
        return any(c.fits_head(trainer, pl_module) for c in probes)

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        head = {id(p) for p in pl_module.classifier.head_parameters()}
        frozen = trainer.current_epoch < self.freeze_epochs
        for p in pl_module.model.parameters():
            if id(p) not in head:
                p.requires_grad = not frozen
        frozen_bn = frozen or self.bn_frozen(trainer, pl_module)
        for m in pl_module.model.modules():
            if isinstance(m, _BatchNorm) and not any(id(p) in head for p in m.parameters()):
                m.train(not frozen_bn)  # Lightning keeps each module's mode across validation: set it back
                for p in m.parameters():
                    p.requires_grad = not frozen_bn

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:  # after a validation pass Lightning puts the model back in train mode
            self._apply(trainer, pl_module)


class WeightEMA(WeightAveraging):
    """Exponential moving average of the weights and BatchNorm statistics, updated after every step.

    Validation, checkpoints (and so export) see the average. Only during `fit`: Lightning's callback would
    otherwise swap the average back in when the best checkpoint is validated after training.
    """

    def __init__(self, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"finetune.ema_decay={decay} must be in (0, 1), or null to train without EMA")
        super().__init__(avg_fn=get_ema_avg_fn(decay))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            super().on_validation_epoch_end(trainer, pl_module)


def weight_ema(decay: float | None) -> WeightEMA | None:
    """The EMA callback when `finetune.ema_decay` is set; None (no callback) when it is null."""
    return WeightEMA(float(decay)) if decay else None


class ThroughputMeter(L.Callback):
    """Images per second over training steps, data loading included, validation excluded."""

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._epoch_start = 0.0
        self._last_end = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = self._last_end = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += len(batch[1])
        self._last_end = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds += self._last_end - self._epoch_start

    @property
    def images_per_sec(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None


def evaluation_results(pl_module: L.LightningModule) -> dict:
    """Per-class accuracy and the confusion matrix of the last validation pass.

    Under DDP every process must call this (torchmetrics gathers the states of all processes).
    """
    per_class = pl_module.val_per_class.compute().tolist()
    confusion = pl_module.val_confusion.compute().cpu()
    return {
        "per_class_accuracy": dict(zip(pl_module.classes, per_class, strict=True)),
        "confusion_matrix": confusion.tolist(),
    }


def write_evaluation(result: dict, out_dir: Path) -> None:
    """per_class_accuracy.json and the confusion matrix (PNG) from `evaluation_results`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    classes = list(result["per_class_accuracy"])
    confusion = np.asarray(result["confusion_matrix"])
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "per_class_accuracy.json", result)
    size = max(4.0, 0.4 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 30:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=6)
    ax.set_title("validation confusion matrix")
    fig.tight_layout()
    fig.savefig(out_dir / "confusion_matrix.png", dpi=120)
    plt.close(fig)
