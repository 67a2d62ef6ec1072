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
# standardized features); the best mean held-out fold loss wins. Folds are stratified by class.
STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0)
FOLDS = 3


def fit_logistic(
    features: torch.Tensor, labels: torch.Tensor, classes: int, strength: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (L-BFGS) of standardized `features`; returns (weight, bias) of the
    equivalent linear layer on the raw features."""
    mean, std = features.mean(0), features.std(0, unbiased=False).clamp_min(1e-6)
    x = (features - mean) / std
    weight = torch.zeros(classes, x.shape[1], device=x.device, requires_grad=True)
    bias = torch.zeros(classes, device=x.device, requires_grad=True)
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


def stratified_folds(labels: torch.Tensor, folds: int) -> torch.Tensor:
    """Each sample's fold: its rank among the samples of its class, modulo `folds` (any sample order)."""
    rank = torch.zeros_like(labels)
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        rank[members] = torch.arange(len(members), device=labels.device)
    return rank % folds


def choose_strength(features: torch.Tensor, labels: torch.Tensor, classes: int) -> float:
    """The L2 strength with the lowest cross-validated log loss; the strongest where there are too few
    images to hold any out."""
    if len(labels) < 2 * FOLDS:
        return STRENGTHS[-1]
    fold = stratified_folds(labels, FOLDS)
    splits = [(fold != k, fold == k) for k in range(FOLDS) if (fold == k).any()]
    losses = {}
    for strength in STRENGTHS:
        held_out = []
        for train, held in splits:
            w, b = fit_logistic(features[train], labels[train], classes, strength)
            held_out.append(float(F.cross_entropy(features[held] @ w.T + b, labels[held])))
        losses[strength] = sum(held_out) / len(held_out)
    return min(losses, key=losses.get)


def probe_applies(classifier: Classifier) -> bool:
    """A linear probe fits the head when there are pretrained features to probe and the head is a Linear
    layer (SqueezeNet's Conv2d head keeps its random start)."""
    head = classifier.model.get_submodule(classifier.head_name)
    return classifier.loaded_tensors > 0 and isinstance(head, nn.Linear)


class LinearProbeHead(L.Callback):
    """Fit the new head by logistic regression on the frozen pretrained features before the first step; the
    run then trains at `lr_mult` times its learning rates (ClassifierModule asks `fits_head`).

    Rank 0 fits and broadcasts the head, so every DDP process starts the same. It fits on the CPU: the
    features are a few MB, and L-BFGS reads a scalar back at every line-search step, which on a GPU shared
    with other jobs waits its turn each time (docs/recipes.md: run times on the H200). A resumed run keeps
    its checkpoint's head. Where the features are not finite or the model's output is more than its head's
    (timm's VOLO adds an auxiliary head), the head stays random, with a warning.
    """

    def __init__(self, enabled: bool = True, images_per_class: int = 100, lr_mult: float = 0.3) -> None:
        self.enabled = bool(enabled)
        self.images_per_class = int(images_per_class)
        self.lr_mult = float(lr_mult)

    def fits_head(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """Whether this run starts from a probed head: a pretrained backbone, a Linear head and a datamodule
        that lists the train images (scripts/benchmark_throughput.py feeds batches without one)."""
        has_images = hasattr(trainer.datamodule, "probe_dataloader")
        return self.enabled and has_images and probe_applies(pl_module.classifier)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path or not self.fits_head(trainer, pl_module):
            return
        head = pl_module.model.get_submodule(pl_module.classifier.head_name)
        fitted = self.fit(trainer, pl_module, head) if trainer.is_global_zero else None
        fitted = trainer.strategy.broadcast(fitted, src=0)
        if fitted is not None:
            with torch.no_grad():
                head.weight.copy_(fitted[0].to(head.weight))
                head.bias.copy_(fitted[1].to(head.bias))

    def fit(
        self, trainer: L.Trainer, pl_module: L.LightningModule, head: nn.Linear
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The probe's (weight, bias) on the CPU, or None (and a warning) where it cannot be trusted."""
        started = time.perf_counter()
        loader = trainer.datamodule.probe_dataloader(self.images_per_class)
        with torch.random.fork_rng(devices=[]):  # the probe draws nothing from the run's random state
            probed = pooled_features(trainer, pl_module, head, loader)
        if probed is None:
            log.warning(
                "Linear probe skipped: the features are not finite, or the model's output is not its head's "
                "alone; the head starts random (finetune.linear_probe=false also restores the full lr)"
            )
            return None
        features, labels = probed[0].cpu(), probed[1].cpu()
        strength = choose_strength(features, labels, head.out_features)
        weight, bias = fit_logistic(features, labels, head.out_features, strength)
        if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
            log.warning("Linear probe skipped: the fitted head is not finite; the head starts random")
            return None
        accuracy = float(((features @ weight.T + bias).argmax(1) == labels).float().mean())
        log.info(
            "Head fitted by a linear probe on %d train images (train top-1 %.3f, L2 %g, %.1f s)",
            len(labels),
            accuracy,
            strength,
            time.perf_counter() - started,
        )
        return weight, bias


@torch.no_grad()
def pooled_features(
    trainer: L.Trainer, pl_module: L.LightningModule, head: nn.Linear, loader
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The inputs of `head` (fp32, on the model's device) and the labels of every image of `loader`, from
    the model in eval mode (pretrained BatchNorm statistics) in the run's precision; None when the model's
    output is not the head's output, or a feature is not finite."""
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = head.register_forward_hook(lambda _m, args, out: captured.append((args[0], out)))
    was_training = pl_module.training
    pl_module.eval()
    labels = []
    try:
        with trainer.precision_plugin.forward_context():
            for x, y in loader:
                x = x.to(pl_module.device).contiguous(memory_format=pl_module.memory_format)
                out = pl_module(x)
                head_out = captured[-1][1]
                if not (isinstance(out, torch.Tensor) and out.shape == head_out.shape):
                    return None
                if not torch.allclose(out.float(), head_out.float(), rtol=1e-3, atol=1e-3):
                    return None
                labels.append(y.to(pl_module.device))
    finally:
        hook.remove()
        pl_module.train(was_training)
    features = torch.cat([inputs.float().flatten(1) for inputs, _ in captured])
    return (features, torch.cat(labels)) if torch.isfinite(features).all() else None
