"""Every setting is checked before any data is scanned or any model built, with a message naming the setting,
the value, what is allowed and an example."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_class_folder

from trainer.cli import compose_config
from trainer.data.sources.folder import DatasetLayoutError
from trainer.training import run


@pytest.fixture
def untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the run gets as far as reading the dataset or building a model."""

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bad setting must stop the run before data or model")

    monkeypatch.setattr(run, "build_index", never)
    monkeypatch.setattr(run, "build_classifier", never)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "dataset.image_size=100000",
            ["dataset.image_size=100000", "<= 1024", "Example: dataset.image_size="],
        ),
        ("dataset.image_size=7", ["dataset.image_size=7", ">= 32", "downsampling"]),
        ("dataset.image_size=big", ["dataset.image_size='big'", "an integer"]),
        ("trainer.max_epochs=0", ["trainer.max_epochs=0", ">= 1", "Example: trainer.max_epochs=10"]),
        ("export.formats=[bogus]", ["export.formats", "bogus", "torchscript", "Example: export.formats="]),
        ("model.alpha=abc", ["model.alpha='abc'", "is not a number", "(0, 1.4]", "Example: model.alpha=0.5"]),
        ("model.alpha=2.0", ["model.alpha=2.0 must be in (0, 1.4]", "Example: model.alpha=0.5"]),
        ("dataset.batch_size=0", ["dataset.batch_size=0", ">= 1"]),
        ("dataset.num_workers=-1", ["dataset.num_workers=-1", "auto"]),
        ("dataset.on_bad_image=ignore", ["dataset.on_bad_image='ignore'", "skip, error"]),
        ("dataset.val_fraction=1.5", ["dataset.val_fraction=1.5"]),
        ("dataset.on_leakage=ignore", ["dataset.on_leakage='ignore'", "warn, error, drop"]),
        ("optim.lr=-1", ["optim.lr=-1", "> 0"]),
        ("threads=0", ["threads=0", ">= 1"]),
        ("dataset=folder", ["dataset.root=None", "Example: dataset.root="]),
        ("trainer.devices=0", ["trainer.devices=0", ">= 1"]),
        ("optim.name=lion", ["optim.name='lion'", "adamw, sgd"]),
        ("augment.hflip=2", ["augment.hflip=2", "<= 1"]),
        ("model=timm model.name=not_a_model", ["model.name='not_a_model'", "timm"]),
        ("model.pretrained=/no/such/weights.pth", ["model.pretrained=/no/such/weights.pth", "no such file"]),
        ("export.coreml.minimum_deployment_target=iOS99", ["iOS99", "iOS16"]),
        ("optim.lr=inf", ["optim.lr=inf", "a finite number"]),  # defect: infinity passed the range check
        ("optim.lr=nan", ["optim.lr=nan"]),
        ("export.on_device.learning_rate=inf", ["export.on_device.learning_rate=inf", "a finite number"]),
        ("threads=999", ["threads=999", "usable cores"]),  # defect: 999 threads on 2 cores, 7 min an epoch
        ("export.formats=[]", ["export.formats=[] exports nothing", "export.enabled=false"]),
        ("trainer.precision=bogus", ["trainer.precision='bogus'", "bf16-mixed"]),
        ("memory_format=bogus", ["memory_format='bogus'", "channels_last"]),
    ],
)
def test_bad_setting_is_named_before_any_work(
    tmp_path: Path, untouched: None, override: str, expected: list[str]
) -> None:
    cfg = compose_config(override.split(), output_dir=str(tmp_path / "run"))
    with pytest.raises((ValueError, RuntimeError)) as info:  # what train.py reports in one line
        run.train(cfg)
    message = str(info.value)
    for part in expected:
        assert part in message, message
    assert "\n" not in message


def test_alpha_on_a_model_without_width_multiplier(tmp_path: Path, untouched: None) -> None:
    cfg = compose_config(["model=resnet50", "model.alpha=0.5"], output_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="only supported by the MobileNets, not resnet50"):
        run.train(cfg)


def test_folder_without_root_does_not_read_the_repo_data() -> None:
    cfg = compose_config(["dataset=folder"])
    assert cfg.dataset.root is None


def test_single_class_folder_is_named(tmp_path: Path) -> None:
    root = make_class_folder(tmp_path / "photos", {"cats": 4})
    cfg = compose_config(["dataset=folder", f"dataset.root={root}"], output_dir=str(tmp_path / "run"))
    with pytest.raises(DatasetLayoutError, match=f"{root} has one class folder \\(cats\\)"):
        run.train(cfg)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA GPU")
def test_gpu_trainer_on_a_cpu_machine_is_named_before_any_work(tmp_path: Path, untouched: None) -> None:
    cfg = compose_config(["trainer=gpu"], output_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="trainer.accelerator='gpu'.*no CUDA GPU"):
        run.train(cfg)
