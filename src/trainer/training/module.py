"""The LightningModule: loss, optimizer and schedule, and torchmetrics top-k / per-class accuracy."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from trainer.models.registry import Backbone

TOP_K = (1, 3, 5)


def topk_metrics(num_classes: int) -> MetricCollection:
    """Top-1 always; top-k only where there are more than k classes (else it is trivially 1.0)."""
    metrics = {
        f"top{k}": MulticlassAccuracy(num_classes, top_k=k, average="micro")
        for k in TOP_K
        if k == 1 or num_classes > k
    }
    return MetricCollection(metrics, compute_groups=False)  # groups would merge top-3 and top-5 states


def backbone_blocks(model: nn.Module, head_name: str) -> list[list[nn.Parameter]]:
    """The backbone's parameters in input-to-output order, grouped by block (`features.3`, `layer2.1`, ...).

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
    def __init__(
        self,
        backbone: Backbone,
        classes: list[str],
        optim: Any,
        augment: Any,
        finetune: Any,
        meta: dict[str, Any] | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        super().__init__()
        self.meta = meta or {}  # saved in every checkpoint so export needs nothing else
        self.backbone = backbone
        self.memory_format = memory_format
        self.model = backbone.model.to(memory_format=memory_format)
        self.classes = list(classes)
        self.optim_cfg = optim
        self.finetune_cfg = finetune
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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["trainer_meta"] = self.meta

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
        logits = self(x)
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
        cfg = self.optim_cfg
        lr = float(cfg.lr)
        # A pretrained backbone moves slower than the new head; one trained from scratch does not.
        pretrained = bool(self.backbone.loaded_tensors)
        mult = float(self.finetune_cfg.backbone_lr_mult) if pretrained else 1.0
        decay = float(self.finetune_cfg.get("layer_decay") or 1.0) if pretrained else 1.0
        groups = [{"params": self.backbone.head_parameters(), "lr": lr}]
        blocks = backbone_blocks(self.model, self.backbone.head_name)
        for depth, params in enumerate(blocks):  # layer-wise decay: the earliest blocks move least
            groups.append({"params": params, "lr": lr * mult * decay ** (len(blocks) - depth)})
        if cfg.name == "adamw":
            optimizer = torch.optim.AdamW(
                groups,
                lr=lr,
                weight_decay=float(cfg.weight_decay),
                betas=tuple(cfg.get("betas", (0.9, 0.999))),
            )
        elif cfg.name == "sgd":
            optimizer = torch.optim.SGD(
                groups,
                lr=lr,
                momentum=float(cfg.momentum),
                weight_decay=float(cfg.weight_decay),
                nesterov=bool(cfg.get("nesterov")),
            )
        else:
            raise ValueError(f"optim.name={cfg.name!r}: use adamw or sgd")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(
            total - 1, int(round(float(cfg.warmup_epochs) * total / max(1, self.trainer.max_epochs)))
        )
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, total - warmup), eta_min=lr * float(cfg.min_lr_ratio)
        )
        if warmup > 0:
            start = torch.optim.lr_scheduler.LinearLR(
                optimizer, start_factor=float(cfg.warmup_start_factor), total_iters=warmup
            )
            schedule = torch.optim.lr_scheduler.SequentialLR(optimizer, [start, cosine], milestones=[warmup])
        else:
            schedule = cosine
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
