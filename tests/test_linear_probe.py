"""The linear probe (LP-FT): the logistic regression it fits, and that fine-tuning starts from its head only
when the backbone is pretrained and the run is not resumed."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import fit_with

from trainer.cli import compose_config
from trainer.data.datamodule import balanced_subset
from trainer.models import build_classifier
from trainer.training.linear_probe import (
    STRENGTHS,
    choose_strength,
    fit_logistic,
    pooled_features,
    stratified_folds,
)

QUICK = [
    "model=demo",
    "model.alpha=0.25",
    "dataset.image_size=32",
    "dataset.num_workers=0",
    "dataset.batch_size=12",
    "trainer.precision=32-true",
    "export.enabled=false",
    "~logger",
]


def blobs(n: int, draw: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes in 20 dimensions, offset and badly scaled (as pooled CNN features are); `draw` picks
    new samples of the same classes."""
    centres = torch.randn(3, 20, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(n) % 3
    x = centres[labels] + 0.5 * torch.randn(n, 20, generator=torch.Generator().manual_seed(1 + draw))
    return 5.0 + x * torch.linspace(0.1, 10, 20), labels


def test_fitted_layer_classifies_raw_features() -> None:
    x, y = blobs(300)
    weight, bias = fit_logistic(x, y, 3, strength=1e-2)
    held_x, held_y = blobs(300, draw=1)
    assert weight.shape == (3, 20) and bias.shape == (3,)
    assert ((x @ weight.T + bias).argmax(1) == y).float().mean() > 0.95
    assert ((held_x @ weight.T + bias).argmax(1) == held_y).float().mean() > 0.9


def test_stronger_l2_shrinks_the_logits_and_noise_labels_pick_the_strongest() -> None:
    x, y = blobs(300)
    weak, strong = (fit_logistic(x, y, 3, s)[0] for s in (STRENGTHS[0], STRENGTHS[-1]))
    assert (x @ strong.T).std() < (x @ weak.T).std()
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    assert choose_strength(x, shuffled, 3) == STRENGTHS[-1]  # nothing to learn: regularize most
    assert choose_strength(x, y, 3) < STRENGTHS[-1]


def test_folds_are_stratified_whatever_the_sample_order() -> None:
    labels = torch.tensor([2, 0, 0, 1, 0, 2, 1, 0, 1, 2, 0, 0])
    folds = stratified_folds(labels, 3)
    for label in range(3):
        counts = torch.bincount(folds[labels == label], minlength=3)
        assert counts.max() - counts.min() <= 1
    x, y = blobs(300)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(2))
    assert choose_strength(x[order], y[order], 3) == choose_strength(x, y, 3)


def test_a_few_images_still_give_a_finite_head() -> None:
    x, y = blobs(3)  # one image per class: nothing to hold out
    assert choose_strength(x, y, 3) == STRENGTHS[-1]
    weight, bias = fit_logistic(x, y, 3, STRENGTHS[-1])
    assert torch.isfinite(weight).all() and torch.isfinite(bias).all()
    assert ((x @ weight.T + bias).argmax(1) == y).all()


def test_balanced_subset_keeps_at_most_n_of_each_class_in_order() -> None:
    assert balanced_subset([0, 0, 0, 1, 2, 2, 1, 0], 2) == [0, 1, 3, 4, 5, 6]


class Probed(torch.nn.Module):
    """Features, then a head; with `aux`, a second head added to the output (as timm's VOLO does)."""

    def __init__(self, aux: bool = False) -> None:
        super().__init__()
        self.features, self.head = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)
        self.aux = torch.nn.Linear(8, 2) if aux else None
        self.device, self.memory_format = torch.device("cpu"), torch.contiguous_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.head(f) + (self.aux(f) if self.aux is not None else 0)


@pytest.mark.parametrize(
    ("aux", "bad_input", "usable"), [(False, False, True), (True, False, False), (False, True, False)]
)
def test_features_are_refused_when_the_head_alone_does_not_make_the_output_or_they_are_not_finite(
    aux: bool, bad_input: bool, usable: bool
) -> None:
    from lightning.pytorch.plugins.precision import Precision

    model = Probed(aux).train()
    x = torch.randn(6, 4)
    if bad_input:
        x[2, 1] = float("nan")
    batches = [(x[:3], torch.tensor([0, 1, 0])), (x[3:], torch.tensor([1, 0, 1]))]
    trainer = type("FakeTrainer", (), {"precision_plugin": Precision()})()
    probed = pooled_features(trainer, model, model.head, batches)
    assert (probed is not None) == usable
    assert model.training  # put back in train mode
    if usable:
        features, labels = probed
        assert features.shape == (6, 8) and labels.tolist() == [0, 1, 0, 1, 0, 1]
        assert torch.allclose(features, model.features(x))


class HeadAtStart(L.Callback):
    """The head's weights and learning rate when the first training step is about to run, and the model's
    train-set accuracy then (when a datamodule lists the train images); whether BatchNorm trains in steps."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        norms = [m for m in pl_module.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        self.bn_trains = all(m.training and m.weight.requires_grad for m in norms)
        self.bn_frozen = not any(m.training or m.weight.requires_grad for m in norms)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.head_name = pl_module.classifier.head_name
        head = pl_module.model.get_submodule(self.head_name)
        self.weight = head.weight.detach().clone()
        self.head_lr = trainer.optimizers[0].param_groups[0]["initial_lr"]
        self.train_top1 = None
        if trainer.datamodule is None:
            return
        pl_module.eval()
        right = total = 0
        with torch.no_grad():
            for x, y in trainer.datamodule.probe_dataloader(1000):
                right += int((pl_module(x).argmax(1) == y).sum())
                total += len(y)
        pl_module.train()
        self.train_top1 = right / total


def head_at_start(
    tmp_path: Path, folder: Path, *overrides: str, epochs: int = 1, datamodule: bool = True
) -> HeadAtStart:
    """A run over `folder` (fed by the datamodule, or by its train loader alone); what its head was when
    training began (or resumed)."""
    cfg = compose_config(
        [*QUICK, "dataset=folder", f"dataset.root={folder}", *overrides], output_dir=str(tmp_path / "run")
    )
    L.seed_everything(0)
    spy = HeadAtStart()
    fit_with(cfg, tmp_path / "run", spy, max_epochs=epochs, batches_only=not datamodule)
    return spy


@pytest.fixture
def backbone_weights(tmp_path: Path) -> Path:
    """A state_dict standing in for pretrained weights (the demo network at its 1000 ImageNet classes)."""
    torch.manual_seed(0)
    cfg = compose_config(QUICK, output_dir=str(tmp_path / "weights"))
    path = tmp_path / "backbone.pth"
    torch.save(build_classifier(cfg.model, 1000).model.state_dict(), path)
    return path


def test_pretrained_run_starts_from_the_probe_head(
    tmp_path: Path, tiny_folder: Path, backbone_weights: Path
) -> None:
    weights = f"model.pretrained={backbone_weights}"
    probed = head_at_start(tmp_path / "probe", tiny_folder, weights)
    random = head_at_start(tmp_path / "random", tiny_folder, weights, "finetune.linear_probe=false")
    assert not torch.equal(probed.weight, random.weight)
    assert probed.train_top1 == 1.0  # red, green and blue photos: linearly separable even on these features
    assert random.train_top1 < 0.9
    assert probed.head_lr == pytest.approx(1e-3 * 0.3)  # optim.lr x finetune.probed_lr_mult
    assert random.head_lr == pytest.approx(1e-3)
    # finetune.freeze_bn=probed: the probed head keeps the statistics it was fitted under; a random one not
    assert probed.bn_frozen and random.bn_trains


def test_without_the_probe_the_head_trains_at_the_full_rate(
    tmp_path: Path, tiny_folder: Path, backbone_weights: Path
) -> None:
    weights = f"model.pretrained={backbone_weights}"
    random = head_at_start(tmp_path / "random", tiny_folder, weights, "finetune.linear_probe=false")
    dropped = head_at_start(tmp_path / "dropped", tiny_folder, weights, "~callbacks.linear_probe")
    batches = head_at_start(tmp_path / "batches", tiny_folder, weights, datamodule=False)
    for run in (dropped, batches):  # no probe callback, or no list of train images to probe
        assert torch.equal(run.weight, random.weight)
        assert run.head_lr == pytest.approx(1e-3)
        assert run.bn_trains


def test_from_scratch_run_keeps_its_random_head(tmp_path: Path, tiny_folder: Path) -> None:
    on = head_at_start(tmp_path / "on", tiny_folder)
    off = head_at_start(tmp_path / "off", tiny_folder, "finetune.linear_probe=false")
    assert torch.equal(on.weight, off.weight)  # nothing pretrained to probe: both heads are the seed's
    assert on.head_lr == off.head_lr == pytest.approx(1e-3)
    assert on.bn_trains and off.bn_trains  # random statistics are no place to freeze


def test_resumed_run_keeps_its_checkpoints_head(
    tmp_path: Path, tiny_folder: Path, backbone_weights: Path
) -> None:
    weights = f"model.pretrained={backbone_weights}"
    head_at_start(tmp_path / "first", tiny_folder, weights)
    last = tmp_path / "first" / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    resumed = head_at_start(tmp_path / "again", tiny_folder, weights, f"ckpt_path={last}", epochs=2)
    # no second probe over the trained head, and BatchNorm still frozen under it
    assert torch.equal(resumed.weight, saved[f"model.{resumed.head_name}.weight"])
    assert resumed.bn_frozen
