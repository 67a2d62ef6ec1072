"""The table of export formats: each row's module has the interface; names outside the table fail early."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_export import export_config

from trainer.cli import compose_config
from trainer.export.formats import FORMATS, by_suffix
from trainer.export.settings import ExportSettings
from trainer.training.run import train


def test_every_row_names_a_module_with_the_interface() -> None:
    for row in FORMATS.values():
        module = row.impl()
        assert callable(module.export) and callable(module.load), row.name
        assert callable(getattr(module, "export_headless", None)) == row.headless, row.name
        for suffix, manifest_format in row.suffixes.items():
            assert by_suffix(Path(f"model{suffix.upper()}")) is row and manifest_format.startswith(row.name)


def test_unknown_format_lists_the_table() -> None:
    with pytest.raises(ValueError, match="unknown \\['tflite2'\\]") as error:
        ExportSettings.from_config(export_config(formats=["onnx", "tflite2"]))
    message = str(error.value)
    assert "\n" not in message
    for row in FORMATS.values():
        assert row.describe() in message


def test_unknown_format_stops_training_before_it_starts(tmp_path: Path, tiny_folder: Path) -> None:
    overrides = ["model=demo", "dataset=folder", f"dataset.root={tiny_folder}", "export.formats=[tflite2]"]
    cfg = compose_config(overrides, output_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="tflite2"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
