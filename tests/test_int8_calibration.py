"""The int8 calibration settings: images drawn across classes (export.calibration.images), the renamed
export.onnx.calibration_images, ONNX range estimation (export.onnx.calibration_method) and the nodes kept in
float (export.onnx.keep_float)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from test_export import SIZE, export_config, tiny_net

from trainer.export.converters.onnx import export_onnx, onnx_predictor
from trainer.export.pipeline import calibration_draw
from trainer.export.quantize.onnx_int8 import quantize_int8
from trainer.export.settings import ExportSettings


def test_calibration_is_drawn_across_classes() -> None:
    """A class-grouped list whose first class holds most images still calibrates on every class, evenly
    spread within each; paths without a label are one more group; asking for more gives all."""
    paths = [f"a{i}" for i in range(90)] + [f"b{i}" for i in range(6)] + [f"c{i}" for i in range(4)]
    label_of = {p: "abc".index(p[0]) for p in paths}
    drawn = calibration_draw(paths, label_of, 12)
    assert [p[0] for p in drawn] == ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    assert drawn[:4] == ["a0", "a22", "a45", "a67"]
    small = calibration_draw(paths, label_of, 20)  # class c runs out: its places go to the others
    assert sum(p[0] == "c" for p in small) == 4 and len(small) == 20 and len(set(small)) == 20
    assert calibration_draw(paths, {}, 4) == ["a0", "a25", "a50", "a75"]
    assert calibration_draw(paths, label_of, 500) == paths


def test_the_old_calibration_key_stops_with_the_new_name() -> None:
    with pytest.raises(
        ValueError, match=r"^export.onnx.calibration_images was renamed export.calibration.im"
    ):
        ExportSettings.from_config(export_config(**{"onnx.calibration_images": 32}))
    with pytest.raises(
        ValueError, match=r"calibration_method: unknown 'mse'; choose from minmax, percentile"
    ):
        ExportSettings.from_config(export_config(**{"onnx.calibration_method": "mse"}))
    assert ExportSettings.from_config(export_config()).calibration.images == 64


def _weight_is_quantized(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    """Whether the node's weight comes through a DequantizeLinear (QDQ int8) rather than a float tensor."""
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    return producers.get(node.input[1]) == "DequantizeLinear"


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_onnx_range_estimation_and_float_nodes(tmp_path: Path, method: str) -> None:
    model = tiny_net()
    example = torch.randn(1, 3, SIZE, SIZE)
    fp32_path, int8_path = tmp_path / "model.onnx", tmp_path / "model_int8.onnx"
    export_onnx(model, example, fp32_path, opset=None)
    calibration = np.random.default_rng(0).normal(size=(16, 3, SIZE, SIZE)).astype(np.float32)
    kept = quantize_int8(
        fp32_path, int8_path, calibration, method=method, keep_float=["first_conv", "classifier"]
    )
    quantized = onnx.load(str(int8_path))
    weighted = [n for n in quantized.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert [n.name for n in weighted if not _weight_is_quantized(quantized, n)] == kept
    assert len(kept) == 2 and _weight_is_quantized(quantized, weighted[1])  # the middle conv stays int8
    with torch.inference_mode():
        reference = model(torch.from_numpy(calibration)).numpy()
    outputs = onnx_predictor(int8_path, 1)(calibration)
    assert outputs.shape == reference.shape and np.isfinite(outputs).all()
    with pytest.raises(ValueError, match=r"^export.onnx.keep_float: no node 'stem' in the graph"):
        quantize_int8(fp32_path, tmp_path / "other.onnx", calibration, keep_float=["stem"])
