"""trainer-predict / scripts/predict.py: top-k output that matches PyTorch, and one-line errors (exit 2)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_export import CLASSES, DATA_CONFIG, export_config, make_images, tiny_net

from trainer.data.images import load_rgb
from trainer.data.transforms import eval_transform
from trainer.export.pipeline import export_all
from trainer.export.predict import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("predict")
    samples = make_images(root / "images", per_class=2, seed=3)
    model = tiny_net()
    manifest = export_all(
        model,
        classes=CLASSES,
        data_config=DATA_CONFIG,
        out_dir=root / "export",
        cfg=export_config(formats=["torchscript", "onnx"], **{"onnx.int8": False}),
        calibration_paths=[],
        val_samples=samples,
        provenance={},
    )
    assert manifest["errors"] == []
    return {"dir": root / "export", "images": [Path(p) for p, _ in samples], "model": model}


def pytorch_probabilities(model: torch.nn.Module, image: Path) -> dict[str, float]:
    with torch.no_grad():
        probs = torch.softmax(model(eval_transform(DATA_CONFIG)(load_rgb(image))[None]), dim=1)[0]
    return dict(zip(CLASSES, probs.tolist(), strict=True))


def parse(stdout: str) -> dict[str, list[tuple[str, float]]]:
    """{image: [(label, probability), ...]} from the printed blocks."""
    results: dict[str, list[tuple[str, float]]] = {}
    block: list[tuple[str, float]] = []
    for line in stdout.splitlines():
        if line.startswith("  "):
            label, probability = line.split()
            block.append((label, float(probability)))
        else:
            block = results[line] = []
    return results


@pytest.mark.parametrize("artifact", ["model.onnx", "model_torchscript.pt"])
def test_prints_top_k_like_pytorch(exported: dict, artifact: str, capsys: pytest.CaptureFixture) -> None:
    images = exported["images"][:3]
    code = main(["--artifact", str(exported["dir"] / artifact), *map(str, images), "--top-k", "2"])
    assert code == 0
    printed = parse(capsys.readouterr().out)
    assert list(printed) == [str(i) for i in images]
    for image in images:
        expected = pytorch_probabilities(exported["model"], image)
        top = printed[str(image)]
        assert len(top) == 2 and top[0][1] >= top[1][1]
        assert top[0][0] == max(expected, key=expected.get)
        for label, probability in top:
            assert probability == pytest.approx(expected[label], abs=1e-3)


def test_script_runs_as_a_command(exported: dict) -> None:
    image = exported["images"][0]
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "predict.py"),
            "--artifact",
            str(exported["dir"] / "model.onnx"),
            str(image),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    top = parse(result.stdout)[str(image)]
    assert sorted(label for label, _ in top) == sorted(CLASSES), "default --top-k 3 lists every class here"
    probabilities = [p for _, p in top]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=3e-3)


def run_failing(args: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run main, expect exit code 2 and exactly one line on stderr; return that line."""
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_missing_artifact(exported: dict, capsys: pytest.CaptureFixture) -> None:
    missing = exported["dir"] / "nope.onnx"
    line = run_failing(["--artifact", str(missing), str(exported["images"][0])], capsys)
    assert "artifact not found" in line and str(missing) in line


def test_missing_manifest(exported: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lonely = tmp_path / "model.onnx"
    shutil.copy(exported["dir"] / "model.onnx", lonely)
    line = run_failing(["--artifact", str(lonely), str(exported["images"][0])], capsys)
    assert "manifest.json" in line and str(lonely) in line


@pytest.mark.parametrize("content", [None, b"not an image at all"])
def test_unreadable_image(
    exported: dict, tmp_path: Path, content: bytes | None, capsys: pytest.CaptureFixture
) -> None:
    image = tmp_path / "photo.jpg"
    if content is not None:
        image.write_bytes(content)
    line = run_failing(["--artifact", str(exported["dir"] / "model.onnx"), str(image)], capsys)
    assert "cannot read image" in line and str(image) in line


def test_corrupt_onnx(exported: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.copy(exported["dir"] / "manifest.json", tmp_path / "manifest.json")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07garbage")
    line = run_failing(["--artifact", str(tmp_path / "model.onnx"), str(exported["images"][0])], capsys)
    assert "cannot load" in line and "model.onnx" in line


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_coreml_needs_macos(exported: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.copy(exported["dir"] / "manifest.json", tmp_path / "manifest.json")
    (tmp_path / "ImageClassifier_fp16.mlpackage").mkdir()
    line = run_failing(
        ["--artifact", str(tmp_path / "ImageClassifier_fp16.mlpackage"), str(exported["images"][0])], capsys
    )
    assert "macOS" in line
