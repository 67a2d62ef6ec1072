"""Memory format and precision: what the training steps really run in, and exports that do not notice."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import onnx
import pytest
import torch
from omegaconf import OmegaConf

from trainer.cli import compose_config
from trainer.data.data_config import DataConfig
from trainer.data.datamodule import (
    ImageDataModule,
    decode_all,
    read_image,
    resolve_cache,
    resolve_num_workers,
)
from trainer.data.index import build_index
from trainer.export.settings import ExportSettings
from trainer.models import build_classifier
from trainer.training.module import ClassifierModule, feature_blocks, run_record
from trainer.training.run import build_trainer, train
from trainer.training.speed import cpu_has_native_bf16, resolve_memory_format, resolve_precision

pytestmark = pytest.mark.usefixtures("one_thread")
TORCHVISION = "trainer.models.families.TorchvisionFamily"
TINY = [
    "model=demo",
    "model.alpha=0.25",
    "dataset.image_size=32",
    "dataset.batch_size=8",
    "dataset.num_workers=0",
]


class StepProbe(L.Callback):
    """Records, for each training step, the first convolution's input layout and its output dtype."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        conv = next(m for m in pl_module.model.modules() if isinstance(m, torch.nn.Conv2d))

        def hook(module, args, output):
            if module.training:
                self.steps.append(
                    {
                        "input_channels_last": args[0].is_contiguous(memory_format=torch.channels_last),
                        "weight_channels_last": module.weight.is_contiguous(
                            memory_format=torch.channels_last
                        ),
                        "autocast": torch.is_autocast_enabled("cpu"),
                        "output_dtype": output.dtype,
                        "weight_dtype": module.weight.dtype,
                    }
                )

        conv.register_forward_hook(hook)


def fit_with_probe(tmp_path: Path, folder: Path, *overrides: str) -> list[dict]:
    overrides = (*TINY, "~logger", "dataset=folder", f"dataset.root={folder}", *overrides)
    cfg = compose_config(list(overrides), str(tmp_path))
    index = build_index(cfg.dataset)
    classifier = build_classifier(cfg.model, index.num_classes)
    memory_format = resolve_memory_format(cfg.memory_format, cfg.trainer)
    data_config = DataConfig.resolve(classifier.data_config, int(cfg.dataset.image_size))
    record = run_record(cfg, index.classes, data_config)
    module = ClassifierModule(**record, classifier=classifier, memory_format=memory_format)
    probe = StepProbe()
    trainer, _, _ = build_trainer(cfg, tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.callbacks.append(probe)
    trainer.fit(module, datamodule=ImageDataModule.from_config(index, data_config, cfg))
    assert probe.steps
    return probe.steps


def test_channels_last_bf16_steps_really_run_so(tmp_path, tiny_folder):
    steps = fit_with_probe(
        tmp_path, tiny_folder, "memory_format=channels_last", "trainer.precision=bf16-mixed"
    )
    for step in steps:
        assert step["input_channels_last"] and step["weight_channels_last"]
        assert step["autocast"] and step["output_dtype"] == torch.bfloat16
        assert step["weight_dtype"] == torch.float32  # mixed precision: the master weights stay fp32


def test_final_evaluation_measures_the_fp32_model_that_ships(tmp_path, tiny_folder):
    """Validation during bf16 training runs under autocast; the evaluation metrics.json reports does not."""
    overrides = [*TINY, "~logger", "dataset=folder", f"dataset.root={tiny_folder}"]
    overrides.append("trainer.precision=bf16-mixed")
    cfg = compose_config(overrides, str(tmp_path))
    index = build_index(cfg.dataset)
    classifier = build_classifier(cfg.model, index.num_classes)
    data_config = DataConfig.resolve(classifier.data_config, int(cfg.dataset.image_size))
    module = ClassifierModule(**run_record(cfg, index.classes, data_config), classifier=classifier)
    datamodule = ImageDataModule.from_config(index, data_config, cfg)
    trainer, _, _ = build_trainer(cfg, tmp_path)
    conv = next(m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d))
    dtypes: list[torch.dtype] = []
    conv.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    for full_precision in (False, True):
        dtypes.clear()
        module.full_precision_eval = full_precision
        trainer.validate(module, datamodule=datamodule, verbose=False)
        assert set(dtypes) == {torch.float32 if full_precision else torch.bfloat16}


def test_fp32_contiguous_settings_train_in_plain_nchw_fp32(tmp_path, tiny_folder):
    steps = fit_with_probe(tmp_path, tiny_folder, "memory_format=contiguous", "trainer.precision=32-true")
    for step in steps:
        assert not step["input_channels_last"] and not step["weight_channels_last"]
        assert not step["autocast"] and step["output_dtype"] == torch.float32


def test_auto_settings_follow_the_hardware(tmp_path):
    flags = tmp_path / "cpuinfo"
    flags.write_text("processor : 0\nflags : fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    plain = tmp_path / "cpuinfo_plain"
    plain.write_text("processor : 0\nflags : fpu sse2 avx2 avx512f avx512bw\n")
    assert cpu_has_native_bf16(str(flags)) and not cpu_has_native_bf16(str(plain))
    cpu = OmegaConf.create({"accelerator": "cpu", "precision": "auto"})
    expected = "bf16-mixed" if cpu_has_native_bf16() else "32-true"
    assert resolve_precision(cpu) == expected
    assert resolve_precision(OmegaConf.create({"accelerator": "cpu", "precision": "32-true"})) == "32-true"
    assert resolve_precision(OmegaConf.create({"accelerator": "mps", "precision": "auto"})) == "32-true"
    assert resolve_memory_format("auto", cpu) == torch.channels_last
    assert resolve_memory_format("auto", OmegaConf.create({"accelerator": "mps"})) == torch.contiguous_format
    with pytest.raises(
        ValueError, match="memory_format='nhwc' is unknown; use auto, channels_last or contiguous"
    ):
        resolve_memory_format("nhwc", cpu)


def test_layer_decay_slows_early_blocks_most(tmp_path):
    cfg = OmegaConf.create(
        {"_target_": TORCHVISION, "name": "mobilenet_v2", "alpha": 0.25, "pretrained": False}
    )
    classifier = build_classifier(cfg, 3)
    blocks = feature_blocks(classifier.model, classifier.head_name)
    assert len(blocks) == 19  # features.0 .. features.18 of torchvision's MobileNetV2
    covered = sum(len(b) for b in blocks) + len(classifier.head_parameters())
    assert covered == len(list(classifier.model.parameters()))


@pytest.mark.slow
def test_export_after_channels_last_bf16_ema_training_passes_the_agreement_gates(
    tmp_path, tiny_folder, monkeypatch
):
    """The exported model is fp32 NCHW whatever the training ran in; TorchScript and ONNX agree with it.
    The run reads its export settings once (each read asks git for the author)."""
    overrides = [*TINY, "dataset=folder", f"dataset.root={tiny_folder}", "trainer.max_epochs=2"]
    overrides += ["memory_format=channels_last", "trainer.precision=bf16-mixed", "finetune.ema_decay=0.5"]
    overrides += ["export.formats=[torchscript,onnx]", "export.onnx.int8=false", "export.latency.runs=2"]
    cfg = compose_config(overrides, output_dir=str(tmp_path / "run"))
    reads, read = [], ExportSettings.from_config.__func__
    monkeypatch.setattr(
        ExportSettings, "from_config", classmethod(lambda cls, node: reads.append(node) or read(cls, node))
    )
    metrics = train(cfg)
    assert len(reads) == 1
    assert metrics["precision"] == "bf16-mixed" and metrics["memory_format"] == "channels_last"
    manifest = json.loads((tmp_path / "run" / "export" / "manifest.json").read_text())
    assert manifest["errors"] == []
    for artifact in manifest["artifacts"]:
        if artifact["path"] in ("model_torchscript.pt", "model.onnx"):
            assert artifact["top1_agreement"] >= 0.995, artifact
    graph = onnx.load(str(tmp_path / "run" / "export" / "model.onnx")).graph
    weight_types = {t.data_type for t in graph.initializer if len(t.dims) > 1}
    assert weight_types == {onnx.TensorProto.FLOAT}  # no bf16/fp16 weights leak into the fp32 export
    shape = [d.dim_value or d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert shape[1:] == [3, 32, 32] and graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ckpt = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
    assert "current_model_state" in ckpt  # the EMA is what was checkpointed (and exported)


def test_decoded_cache_gives_the_same_pixels_as_decoding_every_epoch(tiny_folder, tmp_path):
    from PIL import Image

    big = tmp_path / "big" / "train" / "a"
    big.mkdir(parents=True)
    Image.new("RGB", (1200, 900), (10, 200, 30)).save(big / "photo.jpg", quality=90)
    Image.new("RGB", (1200, 900), (10, 200, 30)).save(big / "scan.png")
    samples = [(str(p), 0) for p in sorted((tiny_folder / "train" / "red").iterdir())[:3]]
    samples += [(str(big / "photo.jpg"), 0), (str(big / "scan.png"), 0)]
    decoded = decode_all(samples, min_side=64, threads=2)
    for (path, _), array in zip(samples[:4], decoded, strict=False):
        assert np.array_equal(array, np.asarray(read_image(path, 64)))  # JPEGs: exactly a fresh decode
    assert decoded[3].shape == (113, 150, 3)  # drafted at 1/8 in the decoder: short side still >= 64
    assert decoded[4].shape == (64, 85, 3)  # a PNG has no draft mode: shrunk so it cannot fill the memory
    assert resolve_cache("auto", 1000, 256) and not resolve_cache("auto", 10**9, 448)
    assert resolve_cache(False, 10, 64) is False
    with pytest.raises(ValueError, match="dataset.cache='yes': use auto, true"):
        resolve_cache("yes", 10, 64)


def test_auto_workers_leave_the_cores_to_cpu_training_and_feed_a_gpu(monkeypatch):
    monkeypatch.setattr("trainer.data.datamodule.usable_cpus", lambda: 2)
    assert resolve_num_workers("auto", model_on_cpu=True) == 0
    assert resolve_num_workers("auto", model_on_cpu=False) == 1
    monkeypatch.setattr("trainer.data.datamodule.usable_cpus", lambda: 32)
    assert resolve_num_workers("auto", model_on_cpu=True) == 8
    assert resolve_num_workers("auto", model_on_cpu=False) == 16
    assert resolve_num_workers(3, model_on_cpu=False) == 3
