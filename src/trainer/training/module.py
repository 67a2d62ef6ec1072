"""The LightningModule: loss, optimizer and schedule from the `optim` config, top-k / per-class accuracy.

Its hyperparameters are the run's record (`run_record`): they travel in every checkpoint, so
`ClassifierModule.load_from_checkpoint(path)` rebuilds the trained network on any machine, and export needs
nothing else.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from trainer.data.data_config import DataConfig
from trainer.models.registry import Classifier, build_classifier
from trainer.training.linear_probe import LinearProbeHead
from trainer.training.metrics import topk_metrics


def run_record(cfg: DictConfig, classes: list[str], data_config: DataConfig) -> dict[str, Any]:
    """What travels with the model: the resolved config, the class names and the preprocessing resolved once
    at the start of the run (plain containers, so checkpoints load with `weights_only`)."""
    return {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "classes": list(classes),
        "data_config": data_config.to_dict(),
        "image_size": data_config.size,
    }


def feature_blocks(model: nn.Module, head_name: str) -> list[list[nn.Parameter]]:
    """The feature extractor's parameters in input-to-output order, grouped by block (`features.3`, ...).

    A block is a parameter's module path cut to two levels, which is the stage or block of torchvision and
    timm classifiers; layer-wise learning-rate decay scales each block by its distance from the head.
    """
    blocks: dict[str, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        path = name.rsplit(".", 1)[0] if "." in name else ""
        if path == head_name or path.startswith(head_name + "."):
            continue
        blocks.setdefault(".".join(path.split(".")[:2]), []).append(param)
    return list(blocks.values())


class ClassifierModule(L.LightningModule):
    """Trains `classifier` as the run's config says; the arguments but `classifier` and `memory_format` are
    saved as hyperparameters (the run's record, see `run_record`)."""

    def __init__(
        self,
        config: dict[str, Any],
        classes: list[str],
        data_config: dict[str, Any],
        image_size: int,
        classifier: Classifier | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["classifier", "memory_format"], logger=False)
        if classifier is None:  # reloaded from a checkpoint, which holds every weight
            classifier = build_classifier(
                {**config["model"], "pretrained": False}, len(classes), restoring=True
            )
        self.classifier = classifier
        self.memory_format = memory_format
        # The final evaluation measures what ships: the fp32 model, outside bf16/fp16 autocast (train.py's
        # run sets this before it; every exported artifact is made from fp32 weights).
        self.full_precision_eval = False
        self.model = classifier.model.to(memory_format=memory_format)
        self.classes = list(classes)
        self.optim_cfg = config["optim"]
        self.finetune_cfg = config["finetune"]
        augment = config["augment"]
        n = len(classes)
        smoothing = float(augment.get("label_smoothing") or 0.0)
        mix = float(augment.get("mixup") or 0.0) + float(augment.get("cutmix") or 0.0)
        self.mixup = (
            Mixup(
                mixup_alpha=float(augment.get("mixup") or 0.0),
                cutmix_alpha=float(augment.get("cutmix") or 0.0),
                label_smoothing=smoothing,
                num_classes=n,
            )
            if mix > 0
            else None
        )
        self.train_loss = (
            SoftTargetCrossEntropy() if self.mixup else nn.CrossEntropyLoss(label_smoothing=smoothing)
        )
        self.eval_loss = nn.CrossEntropyLoss()
        self.train_metrics = topk_metrics(n).clone(prefix="train/")
        self.val_metrics = topk_metrics(n).clone(prefix="val/")
        self.val_loss = MeanMetric()  # weighted by batch size and synced over DDP processes: exact
        self.val_per_class = MulticlassAccuracy(n, average="none")
        self.val_confusion = MulticlassConfusionMatrix(n)

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path | IO, map_location: Any = "cpu", **kwargs: Any
    ) -> ClassifierModule:
        """Lightning's loader on the CPU by default, never executing pickle code, whatever the caller or
        TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD asks for. Checkpoints written before the module saved hyperparameters
        load with `trainer.record.load_checkpoint`."""
        kwargs["weights_only"] = True
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Images enter in the model's memory format (channels_last: no layout change in the first conv)."""
        x, y = batch
        return x.contiguous(memory_format=self.memory_format), y

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.mixup is not None:
            x, soft = self.mixup(x, y)
            logits = self(x)
            loss = self.train_loss(logits, soft)
        else:
            logits = self(x)
            loss = self.train_loss(logits, y)
            self.train_metrics.update(logits.detach(), y)
            self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        fp32 = torch.autocast(x.device.type, enabled=False) if self.full_precision_eval else nullcontext()
        with fp32:
            logits = self(x).float()
        self.val_loss.update(self.eval_loss(logits, y), weight=len(y))
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True)
        self.val_metrics.update(logits, y)
        self.val_per_class.update(logits, y)
        self.val_confusion.update(logits, y)
        self.log_dict(self.val_metrics, on_epoch=True, prog_bar=True)

    def on_validation_epoch_start(self) -> None:
        self.val_per_class.reset()
        self.val_confusion.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        """The `optim.optimizer` over parameter groups (head at optim.lr, feature blocks slower; all gentler
        when the head starts fitted by the linear probe), stepped by `optim.scheduler` every step."""
        lr = float(self.optim_cfg["lr"])
        # A head fitted by the linear probe needs gentler steps than a random one.
        probes = [c for c in self.trainer.callbacks if isinstance(c, LinearProbeHead)]
        lr *= next((c.lr_mult for c in probes if c.fits_head(self.trainer, self)), 1.0)
        # A pretrained feature extractor moves slower than the new head; one trained from scratch does not.
        pretrained = bool(self.classifier.loaded_tensors)
        mult = float(self.finetune_cfg["backbone_lr_mult"]) if pretrained else 1.0
        decay = float(self.finetune_cfg.get("layer_decay") or 1.0) if pretrained else 1.0
        groups = [{"params": self.classifier.head_parameters(), "lr": lr}]
        blocks = feature_blocks(self.model, self.classifier.head_name)
        for depth, params in enumerate(blocks):  # layer-wise decay: the earliest blocks move least
            groups.append({"params": params, "lr": lr * mult * decay ** (len(blocks) - depth)})
        optimizer = instantiate(self.optim_cfg["optimizer"])(groups, lr=lr)  # the schedule's floor follows
        scheduler = instantiate(self.optim_cfg["scheduler"])(
            optimizer, total_steps=self.trainer.estimated_stepping_batches, epochs=self.trainer.max_epochs
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
