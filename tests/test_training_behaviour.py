"""Resume and freezing do what they promise, checked on the tensors: an interrupted run resumed from its
last.ckpt ends where the uninterrupted run ends; frozen layers and BatchNorm statistics do not move."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import fit_with

from trainer.cli import compose_config
from trainer.data.datamodule import ImageDataModule
from trainer.training.run import train

# No random crop, flip or dropout: Lightning checkpoints no random-number state, so these would draw
# differently after a resume than in the uninterrupted run.
DETERMINISTIC = [
    "model=demo",
    "model.alpha=0.25",
    "model.dropout=0.0",
    "dataset.image_size=32",
    "dataset.num_workers=0",
    "augment.scale=[1.0,1.0]",
    "augment.ratio=[1.0,1.0]",
    "augment.hflip=0.0",
    "optim.warmup_epochs=1",
    "trainer.precision=32-true",
    "memory_format=contiguous",
    "export.enabled=false",
    "~logger",
]
DEMO = [
    "dataset.generate_size=40",
    "dataset.train_per_class=4",
    "dataset.val_per_class=2",
    "dataset.batch_size=8",
]
EPOCHS = 3


class StopAfter(L.Callback):
    """An interruption: the run stops after `epochs` epochs, its last.ckpt written, as after a kill."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def _last(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _assert_close(a: object, b: object, where: str) -> None:
    """Tensors within float tolerance, everything else equal, through nested dicts and lists."""
    if isinstance(a, torch.Tensor):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-6), where
    else:
        assert a == b, where


@pytest.fixture
def in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training batches in file order. The shuffle draws from the global random state, which no checkpoint
    keeps: a resumed run sees other batches than the uninterrupted one (same images, other groups), and
    from-scratch training turns that rounding-sized difference into a large one within a few steps."""
    loader = ImageDataModule._loader
    monkeypatch.setattr(
        ImageDataModule,
        "_loader",
        lambda self, dataset, shuffle, sampler=None: loader(self, dataset, False, sampler),
    )


def test_resumed_run_ends_with_the_uninterrupted_runs_weights_optimizer_and_lr(
    tmp_path: Path, in_order: None
) -> None:
    common = [*DETERMINISTIC, *DEMO, f"dataset.root={tmp_path / 'data'}", f"trainer.max_epochs={EPOCHS}"]
    train(compose_config(common, output_dir=str(tmp_path / "straight")))
    stop = f"+callbacks.interrupt={{_target_:{__name__}.StopAfter,epochs:1}}"
    train(compose_config([*common, stop], output_dir=str(tmp_path / "interrupted")))
    interrupted = _last(tmp_path / "interrupted")
    assert interrupted["epoch"] == 0 and interrupted["global_step"] == 3
    resume = f"ckpt_path={tmp_path / 'interrupted' / 'checkpoints' / 'last.ckpt'}"
    train(compose_config([*common, resume], output_dir=str(tmp_path / "resumed")))

    straight, resumed = _last(tmp_path / "straight"), _last(tmp_path / "resumed")
    assert (
        (resumed["epoch"], resumed["global_step"]) == (straight["epoch"], straight["global_step"]) == (2, 9)
    )
    _assert_close(resumed["state_dict"], straight["state_dict"], "state_dict")
    _assert_close(resumed["optimizer_states"], straight["optimizer_states"], "optimizer_states")
    _assert_close(resumed["lr_schedulers"], straight["lr_schedulers"], "lr_schedulers")
    # and the schedule really moved: warmup over the first epoch, then down the cosine
    assert straight["lr_schedulers"][0]["last_epoch"] == 9
    assert 0 < straight["optimizer_states"][0]["param_groups"][0]["lr"] < 1e-3


class Snapshots(L.Callback):
    """The model's state_dict before training and after every training epoch."""

    def __init__(self) -> None:
        self.taken: list[dict[str, torch.Tensor]] = []

    def _take(self, pl_module: L.LightningModule) -> None:
        self.taken.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take(pl_module)


def fit_with_snapshots(tmp_path: Path, folder: Path, *overrides: str) -> tuple[list[dict], str, set[str]]:
    """Train two epochs; the snapshots, the head's module path and the BatchNorm tensor names."""
    cfg = compose_config(
        [*DETERMINISTIC, "dataset=folder", f"dataset.root={folder}", "dataset.batch_size=12", *overrides],
        output_dir=str(tmp_path / "run"),
    )
    L.seed_everything(cfg.seed)
    snapshots = Snapshots()
    classifier = fit_with(cfg, tmp_path / "run", snapshots, max_epochs=2)
    batchnorm = {
        f"{name}.{key}"
        for name, m in classifier.model.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for key in m.state_dict()
    }
    return snapshots.taken, classifier.head_name, batchnorm


def _moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], names: set[str]) -> set[str]:
    return {name for name in names if not torch.equal(before[name], after[name])}


def test_frozen_epoch_moves_only_the_head(tmp_path: Path, tiny_folder: Path) -> None:
    (start, frozen, unfrozen), head, batchnorm = fit_with_snapshots(
        tmp_path, tiny_folder, "finetune.freeze_epochs=1"
    )
    head_keys = {k for k in start if k.startswith(f"{head}.")}
    features = set(start) - head_keys
    assert head_keys and batchnorm <= features
    assert _moved(start, frozen, head_keys) == head_keys  # the head trained in the frozen epoch ...
    assert _moved(start, frozen, features) == set()  # ... nothing else, BatchNorm statistics included
    assert _moved(frozen, unfrozen, features - batchnorm)  # then the feature extractor trains
    assert _moved(frozen, unfrozen, {k for k in batchnorm if k.endswith("running_mean")})


def test_frozen_batchnorm_stays_frozen_while_the_rest_trains(tmp_path: Path, tiny_folder: Path) -> None:
    (start, first, second), head, batchnorm = fit_with_snapshots(
        tmp_path, tiny_folder, "finetune.freeze_bn=true"
    )
    assert batchnorm and _moved(start, second, batchnorm) == set()  # affine and statistics, both epochs
    convolutions = {k for k in start if k.endswith(".weight") and k not in batchnorm and start[k].ndim == 4}
    assert _moved(start, first, convolutions) == convolutions
    assert _moved(first, second, convolutions) == convolutions
