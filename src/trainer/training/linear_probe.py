"""Start fine-tuning from a fitted head: a linear probe on the pretrained features (LP-FT, Kumar et al. 2022).

A new head starts random, so the first steps of fine-tuning push the pretrained features around to suit a
random classifier. Fitting the head first, by logistic regression on the frozen backbone's features of the
training images (one forward pass, no augmentation), lets fine-tuning start where the head is already good;
on small photo sets and short budgets that is worth points of top-1 (docs/recipes.md).
"""

from __future__ import annotations

import logging
import time

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

from trainer.models.registry import Classifier

log = logging.getLogger(__name__)

# L2 strengths tried by cross-validation on the training features (per-sample loss + strength/2 * |W|^2 on
# standardized features); the best mean held-out fold loss wins.
STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0)
FOLDS = 3


def fit_logistic(
    features: torch.Tensor, labels: torch.Tensor, classes: int, strength: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (L-BFGS) of standardized `features`; returns (weight, bias) of the
    equivalent linear layer on the raw features."""
    mean, std = features.mean(0), features.std(0, unbiased=False).clamp_min(1e-6)
    x = (features - mean) / std
    weight = torch.zeros(classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, labels)
        loss = loss + 0.5 * strength * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    weight, bias = weight.detach(), bias.detach()
    return weight / std, bias - (weight / std) @ mean


def choose_strength(features: torch.Tensor, labels: torch.Tensor, classes: int) -> float:
    """The L2 strength with the lowest cross-validated log loss (folds interleaved by sample order); the
    strongest where there are too few images to hold any out."""
    if len(labels) < 2 * FOLDS:
        return STRENGTHS[-1]
    folds = torch.arange(len(labels)) % FOLDS
    losses = {}
    for strength in STRENGTHS:
        total = 0.0
        for k in range(FOLDS):
            train, held = folds != k, folds == k
            w, b = fit_logistic(features[train], labels[train], classes, strength)
            total += float(F.cross_entropy(features[held] @ w.T + b, labels[held]))
        losses[strength] = total / FOLDS
    return min(losses, key=losses.get)


def probe_applies(classifier: Classifier) -> bool:
    """A linear probe fits the head when there are pretrained features to probe and the head is a Linear
    layer (SqueezeNet's Conv2d head keeps its random start)."""
    head = classifier.model.get_submodule(classifier.head_name)
    return classifier.loaded_tensors > 0 and isinstance(head, nn.Linear)


class LinearProbeHead(L.Callback):
    """Fit the new head by logistic regression on the frozen pretrained features before the first step.

    Only where `probe_applies` and the run does not resume (a checkpoint has its own head). Under DDP rank
    0's head is broadcast, so every process starts the same. Turned off with finetune.linear_probe=false,
    which also drops the gentler learning rate that goes with it (ClassifierModule.configure_optimizers).
    """

    def __init__(self, enabled: bool = True, images_per_class: int = 100) -> None:
        self.enabled = bool(enabled)
        self.images_per_class = int(images_per_class)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.ckpt_path or not probe_applies(pl_module.classifier):
            return
        head = pl_module.model.get_submodule(pl_module.classifier.head_name)
        started = time.perf_counter()
        loader = trainer.datamodule.probe_dataloader(self.images_per_class)
        features, labels = pooled_features(trainer, pl_module, head, loader)
        classes = head.out_features
        strength = choose_strength(features, labels, classes)
        weight, bias = fit_logistic(features, labels, classes, strength)
        weight, bias = trainer.strategy.broadcast((weight, bias), src=0)
        with torch.no_grad():
            head.weight.copy_(weight.to(head.weight))
            head.bias.copy_(bias.to(head.bias))
        accuracy = float(((features @ weight.T + bias).argmax(1) == labels).float().mean())
        log.info(
            "Head fitted by a linear probe on %d train images (train top-1 %.3f, L2 %g, %.1f s)",
            len(labels),
            accuracy,
            strength,
            time.perf_counter() - started,
        )


@torch.no_grad()
def pooled_features(
    trainer: L.Trainer, pl_module: L.LightningModule, head: nn.Linear, loader
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs of `head` for every image of `loader`, from the model in eval mode (pretrained BatchNorm
    statistics), in the run's precision; fp32 on the CPU."""
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, args, _out: captured.append(args[0].float().cpu()))
    was_training = pl_module.training
    pl_module.eval()
    labels = []
    try:
        with trainer.precision_plugin.forward_context():
            for x, y in loader:
                x = x.to(pl_module.device).contiguous(memory_format=pl_module.memory_format)
                pl_module(x)
                labels.append(y)
    finally:
        hook.remove()
        pl_module.train(was_training)
    return torch.cat(captured).flatten(1), torch.cat(labels)
