"""Every way a command ends early (a signal, a folder it cannot write, a missing setting, a diverging loss)
ends in one line and a non-zero exit, never a traceback; training keeps its last.ckpt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model=demo",
    "model.alpha=0.25",
    "dataset.image_size=32",
    "dataset.batch_size=4",
    "export.enabled=false",
]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO / "src")}


def _script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_training_saves_last_ckpt_and_says_how_to_resume(tmp_path, tiny_folder, signum):
    """Defect: SIGTERM ended training with exit 0 and nothing said; Ctrl-C with 1 and nothing said."""
    run_dir = tmp_path / "run"
    args = [*TINY, "dataset=folder", f"dataset.root={tiny_folder}", "trainer.max_epochs=200"]
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("epoch 2/"):
            process.send_signal(signum)
            break
    output = "".join(lines) + process.stdout.read()
    assert process.wait(timeout=120) == 128 + signum, output[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file() and "Traceback" not in output
    message = next(line for line in output.splitlines() if "training stopped by" in line)
    assert (
        str(last) in message and f"ckpt_path={last}" in message and "Resume with: python train.py" in message
    )


def _read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write to (root ignores modes: then a sysfs folder)."""
    for folder in (tmp_path / "read-only", Path("/sys/kernel")):
        if folder.parent == tmp_path:
            folder.mkdir()
            folder.chmod(0o555)
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError:
            return folder
    pytest.skip("no folder here refuses writes")


def test_read_only_run_folder_is_one_line(tmp_path):
    """Defect: a read-only run folder printed two chained Hydra tracebacks."""
    folder = _read_only_folder(tmp_path)
    out = _script("train.py", *TINY, f"hydra.run.dir={folder}", cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 1 and "Traceback" not in text, text[-3000:]
    assert f"cannot write the run folder {folder}" in text and "hydra.run.dir=" in text


def test_export_without_ckpt_is_one_line(tmp_path):
    """Defect: scripts/export.py without ckpt= printed an omegaconf MissingMandatoryValue traceback."""
    out = _script("scripts/export.py", cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 1 and "Traceback" not in text and "MissingMandatoryValue" not in text
    assert "needs ckpt=PATH" in text


@pytest.mark.slow
def test_nan_loss_stops_training_at_once_naming_the_learning_rate(tmp_path, tiny_folder):
    """Defect: a diverging run (optim.lr huge) trained to the end on NaN and exported a NaN model."""
    started = time.perf_counter()
    out = _script(
        "train.py",
        *TINY,
        "dataset=folder",
        f"dataset.root={tiny_folder}",
        "optim.lr=1e30",
        "trainer.max_epochs=50",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 1 and "Traceback" not in text, text[-3000:]
    assert "the learning rate is likely too high (optim.lr=1e+30)" in text
    assert "epoch 3/" not in text and time.perf_counter() - started < 120
    log_file = next((tmp_path / "run").glob("*.log"))
    assert "Traceback" in log_file.read_text()  # the full trace stays in the log


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (OSError(28, "No space left on device", "/out/model.onnx"), 1, "no space left on the device writing"),
        (KeyboardInterrupt(), 130, "stopped by Ctrl-C (SIGINT)"),
    ],
)
def test_disk_full_and_ctrl_c_end_in_one_line(error, code, line, caplog):
    """Poor: disk full printed a 15-line traceback; Ctrl-C during export a 32-300-frame one."""
    from omegaconf import OmegaConf

    from trainer.cli import exit_on_user_error

    def job(cfg):
        raise error

    with caplog.at_level("INFO"), pytest.raises(SystemExit) as exited:
        exit_on_user_error(job, OmegaConf.create({}))
    assert exited.value.code == code
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and line in errors[0]
    assert any(r.name == "trace" and r.exc_info for r in caplog.records), "the traceback goes to the log file"
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # exit_on_user_error installed its handler
