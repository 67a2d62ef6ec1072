"""Every setting of a run checked in one place, before any data is scanned or any model is built.

A typo or an impossible value must cost a second, not a dataset scan, a model download or an epoch. Each
message names the setting, the value given, what is allowed and an example, so the fix is one edit.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainer.data.sources.folder import folder_source
from trainer.export.settings import ExportSettings
from trainer.utils.cpus import usable_cpus

MIN_IMAGE_SIZE = 32  # the backbones downsample 32x: smaller inputs leave less than one pixel of features
MAX_IMAGE_SIZE = 1024  # memory grows with size^2: 1024 px already needs ~21x the memory of 224 px per image
LEAKAGE_ACTIONS = ("warn", "error", "drop")
BAD_IMAGE_ACTIONS = ("skip", "error")
OPTIMIZERS = ("adamw", "sgd")  # the options of conf/optim
FOLDER_SOURCE = f"{folder_source.__module__}.{folder_source.__qualname__}"  # dataset=folder's _target_


class SettingError(ValueError):
    """A setting has a value the run cannot use; the message says which, what is allowed and an example."""


def setting_error(key: str, value: Any, allowed: str, example: Any, why: str = "") -> SettingError:
    reason = f" ({why})" if why else ""
    return SettingError(f"{key}={value!r}: allowed {allowed}{reason}. Example: {key}={example}")


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def number(
    cfg: DictConfig,
    key: str,
    *,
    low: float,
    high: float = math.inf,
    example: Any,
    integer: bool = False,
    low_open: bool = False,
    why: str = "",
) -> float:
    """The value of `key` as a number within [low, high] (or (low, high] when `low_open`)."""
    value = _get(cfg, key)
    kind = "an integer" if integer else "a number"
    upper = "" if math.isinf(high) else f" and <= {int(high) if integer else f'{high:g}'}"
    allowed = f"{kind} {'>' if low_open else '>='} {low:g}{upper}"
    if isinstance(value, bool) or value is None:
        raise setting_error(key, value, allowed, example, why)
    try:
        parsed = float(value)
    except (TypeError, ValueError):
        raise setting_error(key, value, allowed, example, why) from None
    if integer and not parsed.is_integer():
        raise setting_error(key, value, allowed, example, why)
    below = parsed <= low if low_open else parsed < low
    if below or parsed > high or not math.isfinite(parsed):
        raise setting_error(key, value, allowed, example, why)
    return parsed


def choice(cfg: DictConfig, key: str, options: tuple[str, ...]) -> str:
    value = _get(cfg, key)
    if value not in options:
        raise setting_error(key, value, f"one of {', '.join(options)}", options[0])
    return value


def check_dataset(cfg: DictConfig) -> None:
    number(
        cfg,
        "dataset.image_size",
        low=MIN_IMAGE_SIZE,
        high=MAX_IMAGE_SIZE,
        example=224,
        integer=True,
        why=f"below {MIN_IMAGE_SIZE} px the backbones' 32x downsampling leaves no spatial features; "
        f"above {MAX_IMAGE_SIZE} px a batch does not fit in memory",
    )
    number(cfg, "dataset.batch_size", low=1, example=32, integer=True)
    workers = _get(cfg, "dataset.num_workers")
    if workers != "auto":
        number(cfg, "dataset.num_workers", low=0, example="auto", integer=True, why="or auto")
    if _get(cfg, "dataset.val_fraction") is not None:
        number(cfg, "dataset.val_fraction", low=0, high=0.99, low_open=True, example=0.2)
    choice(cfg, "dataset.on_bad_image", BAD_IMAGE_ACTIONS)
    choice(cfg, "dataset.on_leakage", LEAKAGE_ACTIONS)
    if _get(cfg, "dataset.source._target_") == FOLDER_SOURCE and not _get(cfg, "dataset.root"):
        raise setting_error(
            "dataset.root",
            None,
            "a folder of train/<class>/ + val/<class>/ or <class>/ subfolders",
            "~/photos",
            "dataset=folder reads your own photos and has no default folder",
        )


def check_model(cfg: DictConfig) -> None:
    from trainer.models.registry import model_family

    model_family(cfg.model).check()  # model.alpha's range depends on the model family
    for key in ("model.dropout", "model.drop_path"):
        if _get(cfg, key) is not None:
            number(cfg, key, low=0, high=0.99, example=0.2)


def check_augment(cfg: DictConfig) -> None:
    for key in ("augment.hflip", "augment.random_erasing", "augment.label_smoothing"):
        if _get(cfg, key) is not None:
            number(cfg, key, low=0, high=1, example=0.1)
    for key in ("augment.mixup", "augment.cutmix"):
        if _get(cfg, key) is not None:
            number(cfg, key, low=0, example=0.2, why="an alpha; 0 turns it off")


def check_training(cfg: DictConfig) -> None:
    number(cfg, "trainer.max_epochs", low=1, example=10, integer=True)
    devices = _get(cfg, "trainer.devices")
    if devices != "auto" and not OmegaConf.is_list(devices):
        number(cfg, "trainer.devices", low=1, example=2, integer=True, why="or auto, or a list of device ids")
    if _get(cfg, "trainer.num_nodes") is not None:
        number(cfg, "trainer.num_nodes", low=1, example=2, integer=True)
    choice(cfg, "optim.name", OPTIMIZERS)
    number(cfg, "optim.lr", low=0, low_open=True, example=1e-3)
    number(cfg, "optim.weight_decay", low=0, example=0.05)
    number(cfg, "optim.warmup_epochs", low=0, example=0.25)
    number(cfg, "finetune.freeze_epochs", low=0, example=1, integer=True)
    number(cfg, "finetune.backbone_lr_mult", low=0, example=0.5)
    number(cfg, "finetune.probed_lr_mult", low=0, low_open=True, example=0.3)
    number(cfg, "finetune.linear_probe_images_per_class", low=1, example=100, integer=True)
    if _get(cfg, "finetune.freeze_bn") not in (True, False, "probed"):
        allowed = "true, false or probed (frozen when the head starts from the linear probe)"
        raise setting_error("finetune.freeze_bn", _get(cfg, "finetune.freeze_bn"), allowed, "probed")
    number(cfg, "seed", low=0, high=2**32 - 1, example=42, integer=True)
    if _get(cfg, "threads") is not None:
        cores = usable_cpus()
        why = (
            f"this machine has {cores} usable cores, more threads only wait on each other; null: one per core"
        )
        number(cfg, "threads", low=1, high=cores, example=cores, integer=True, why=why)


PRECISIONS = ("auto", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "bf16-true", "16-true", "64")


def check_hardware(cfg: DictConfig) -> None:
    """The accelerator exists here; precision and memory_format are values the Trainer knows."""
    import torch

    from trainer.training.speed import resolve_memory_format

    accelerator = str(_get(cfg, "trainer.accelerator") or "cpu")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise setting_error(
            "trainer.accelerator", accelerator, "cpu or auto here", "cpu", "this machine has no CUDA GPU"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise setting_error(
            "trainer.accelerator", accelerator, "cpu or auto here", "cpu", "no Apple MPS here"
        )
    precision = str(_get(cfg, "trainer.precision") or "auto")
    if precision not in PRECISIONS:
        raise setting_error("trainer.precision", precision, f"one of {', '.join(PRECISIONS)}", "auto")
    resolve_memory_format(_get(cfg, "memory_format"), cfg.trainer)


def check_export(export_cfg: DictConfig) -> ExportSettings:
    """The export settings (formats, Core ML variants, target, ...) through the export's own validators; the
    run exports with the settings returned, read once."""
    check_finite(OmegaConf.to_container(export_cfg, resolve=False), "export")
    try:
        return ExportSettings.from_config(export_cfg)
    except ValueError as exc:
        raise SettingError(f"{exc}. Example: export.formats=[torchscript,onnx,coreml]") from None


def check_finite(node: Any, prefix: str = "") -> None:
    """No number anywhere in the config is NaN or infinite: `optim.lr=inf` trains to NaN weights."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, float) and not math.isfinite(value):
            raise setting_error(path, value, "a finite number", 0.001, "NaN and infinity break training")
        check_finite(value, path)


def check_train_settings(cfg: DictConfig) -> tuple[dict[str, Any] | None, ExportSettings | None]:
    """Check every setting of `train.py`; return the run record of `ckpt_path` when resuming, and the export
    settings when exporting."""
    check_finite(OmegaConf.to_container(cfg, resolve=False))
    check_dataset(cfg)
    check_model(cfg)
    check_augment(cfg)
    check_training(cfg)
    check_hardware(cfg)
    settings = check_export(cfg.export) if cfg.export.enabled else None
    if _get(cfg, "ckpt_path"):
        from trainer.record import read_resume_checkpoint

        return read_resume_checkpoint(cfg.ckpt_path, cfg), settings
    return None, settings
