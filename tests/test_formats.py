"""The table of export formats: each row's module has the interface; names outside the table fail early."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
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


@pytest.mark.parametrize(
    "override, message",
    [
        ("export.onnx.int88=true", "int88"),  # a typo in a key
        ("export.latency.runs=many", "could not be converted to Integer"),  # a wrong type
        ("export.headless=maybe", "is not a valid bool"),
    ],
)
def test_export_schema_fails_at_compose_time(override: str, message: str) -> None:
    with pytest.raises(ConfigCompositionException) as error:
        compose_config([override])
    assert message in str(error.value) or message in str(error.value.__cause__)


def test_settings_from_a_node_outside_hydra_are_checked_too() -> None:
    node = OmegaConf.to_container(export_config())
    del node["onnx"]["int8"]  # e.g. an old config file written by hand
    with pytest.raises(ValueError, match="int8"):
        ExportSettings.from_config(node)
