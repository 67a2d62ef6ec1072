"""Every torch.load path refuses a pickle that carries code, even with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1;
a broken `ckpt_path=` ends in one clear line."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from trainer import cli
from trainer.cli import compose_config
from trainer.models.weights import PretrainedWeightsError, read_state_dict
from trainer.record import CheckpointError, load_checkpoint, read_checkpoint
from trainer.training.callbacks import AtomicCheckpointIO
from trainer.training.module import ClassifierModule
from trainer.training.run import build_trainer, train
from trainer.utils.files import check_zip_sizes


class Payload:
    """Unpickling this creates `marker`: what a malicious checkpoint would do with os.system instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def evil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A checkpoint-shaped file whose unpickling runs code, and the marker that code would create."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "trainer_meta": Payload(marker), "loops": {}, "epoch": 0}, path)
    return path, marker


def test_the_payload_runs_when_loaded_unsafely(evil: tuple[Path, Path]) -> None:
    path, marker = evil
    with pytest.warns(UserWarning, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        torch.load(path)  # what torch does by default with that variable set
    assert marker.exists()


def test_export_and_pretrained_paths_refuse_the_payload(evil: tuple[Path, Path]) -> None:
    path, marker = evil
    with pytest.raises(CheckpointError, match="never run"):
        load_checkpoint(path)
    with pytest.raises(PretrainedWeightsError):
        read_state_dict(path)
    assert not marker.exists()


def test_lightning_load_from_checkpoint_refuses_the_payload(evil: tuple[Path, Path]) -> None:
    path, marker = evil
    with pytest.raises(Exception, match="Weights only load failed"):
        ClassifierModule.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    assert not marker.exists()


def test_resume_refuses_the_payload_before_reading_data(evil: tuple[Path, Path], tmp_path: Path) -> None:
    path, marker = evil
    cfg = compose_config(["dataset=folder", f"dataset.root={tmp_path / 'absent'}", f"ckpt_path={path}"])
    cfg.paths.output_dir = str(tmp_path / "run")
    with pytest.raises(CheckpointError, match="ckpt_path="):
        train(cfg)
    assert not marker.exists()


def test_lightning_resume_and_best_reload_refuse_the_payload(evil: tuple[Path, Path], tmp_path: Path) -> None:
    """Lightning's own load (trainer.fit(ckpt_path=...)) goes through our CheckpointIO, which forces it."""
    path, marker = evil
    cfg = compose_config(["trainer.max_epochs=1", "logger=[]"])
    trainer, _, _ = build_trainer(cfg, tmp_path / "run", enable_progress_bar=False)
    with pytest.raises(Exception, match="Weights only load failed"):
        trainer.fit(BoringModel(), ckpt_path=str(path))
    with pytest.raises(Exception, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()


def _real_checkpoint(path: Path) -> Path:
    meta = {"config": {"model": {"name": "demo"}}, "classes": ["a", "b"]}
    torch.save({"state_dict": {"w": torch.zeros(64, 64)}, "trainer_meta": meta}, path)
    return path


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated", "folder", "not_ours", "missing"])
def test_broken_checkpoint_is_one_clear_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "last.ckpt"
    if kind == "garbage":
        path.write_bytes(b"\x80\x02garbage" * 100)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = _real_checkpoint(path).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "folder":
        path.mkdir()
    elif kind == "not_ours":
        torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path, "ckpt_path")
    message = str(info.value)
    assert message.startswith(f"ckpt_path={path}") and "\n" not in message


def test_resume_from_a_weights_only_checkpoint_says_which_file_to_use(tmp_path: Path) -> None:
    path = _real_checkpoint(tmp_path / "best.ckpt")
    cfg = compose_config([f"ckpt_path={path}"])
    cfg.paths.output_dir = str(tmp_path / "run")
    with pytest.raises(CheckpointError, match="last.ckpt"):
        train(cfg)


def test_cli_garbage_ckpt_path_exits_1_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """train.py's entry point in-process (a subprocess would spend its time importing torch)."""
    garbage = tmp_path / "last.ckpt"
    garbage.write_bytes(b"PK\x03\x04 not a checkpoint")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        sys, "argv", ["train.py", f"ckpt_path={garbage}", f"hydra.run.dir={tmp_path / 'run'}"]
    )
    handlers, level = logging.root.handlers[:], logging.root.level
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.train()
    finally:  # Hydra pointed the root logger at this test's captured stdout: give it back
        for handler in set(logging.root.handlers) - set(handlers):
            handler.close()
        logging.root.handlers[:], logging.root.level = handlers, level
    text = "".join(capfd.readouterr())
    assert exit_info.value.code == 1, text
    assert "Traceback" not in text and f"ckpt_path={garbage}" in text
    assert not (tmp_path / "run" / "checkpoints").exists()


def _zip_bomb(path: Path, declared: int) -> Path:
    """A real checkpoint whose data.pkl claims `declared` uncompressed bytes (headers patched): what a
    deflate bomb's headers say, without spending the seconds to compress gigabytes."""
    torch.save({"state_dict": {}}, path)
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):
        at = data.find(signature)
        while at != -1:
            name_at = at + (46 if signature == b"PK\x01\x02" else 30)
            if data[name_at : name_at + 200].split(b"/", 1)[-1].startswith(b"data.pkl"):
                data[at + offset : at + offset + 4] = declared.to_bytes(4, "little")
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))
    return path


def test_zip_bomb_checkpoint_is_refused_fast(tmp_path: Path) -> None:
    """Defect: a 3 MB checkpoint declaring a 3 GB data.pkl cost 26 s and 7.1 GB before it was refused."""
    bomb = _zip_bomb(tmp_path / "bomb.ckpt", 3 << 30)
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"declares 3072 MiB uncompressed.*data.pkl"):
        read_checkpoint(bomb)
    with pytest.raises(PretrainedWeightsError, match="uncompressed"):
        read_state_dict(bomb)
    assert time.perf_counter() - started < 2
    check_zip_sizes(_zip_bomb(tmp_path / "fine.ckpt", 100))  # a plausible size passes
