"""Mixed precision (export.int8.keep_float=auto: per-layer sensitivity, the most sensitive layers kept float)
and quantization-aware fine-tuning (export.int8.method=qat), on small nets whose int8 noise is known."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from test_export import CLASSES, DATA_CONFIG, SIZE, export_config, tiny_net
from torch import nn

from trainer.export.converters import executorch as executorch_format
from trainer.export.converters import onnx as onnx_format
from trainer.export.converters.coreml import export as coreml_format
from trainer.export.converters.litert import export as litert_format
from trainer.export.job import ExportJob
from trainer.export.quantize import pt2e
from trainer.export.quantize.search import float_weight_share
from trainer.export.quantize.sensitivity import kl_divergence, rank_layers, weighted_layers
from trainer.export.quantize.settings import QatSettings
from trainer.export.settings import ExportSettings
from trainer.export.verify import run_batches, torch_predictor


def _images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 3, SIZE, SIZE)).astype(np.float32)


def outlier_net() -> nn.Module:
    """tiny_net with one channel of the first conv's output 200x larger than the others, which the second conv
    ignores: its 8-bit input range is set by that channel, so the seven it reads lose their resolution
    (logits scaled up to a few units, so that the noise moves the answers)."""
    model = tiny_net()
    with torch.no_grad():
        model[0].weight[0] *= 200.0
        model[0].bias[0] = 50.0
        model[3].weight[:, 0] = 0.0
        model[7].weight *= 20.0
    return model


def _job(tmp_path: Path, model: nn.Module, **overrides: object) -> ExportJob:
    settings = ExportSettings.from_config(export_config(**overrides))
    inputs = _images(24, 1)
    return ExportJob(
        model=model,
        classes=CLASSES,
        data_config=DATA_CONFIG,
        out_dir=tmp_path,
        settings=settings,
        inputs=inputs,
        labels=run_batches(torch_predictor(model), inputs).argmax(1),
        reference=run_batches(torch_predictor(model), inputs),
        example=torch.from_numpy(inputs[:1]),
        model_metadata={},
        read_calibration=lambda: _images(16, 2),
        threads=1,
        read_training=lambda count, held_out: _images(count, 3 if held_out else 4),
    )


def test_int8_settings_fail_in_one_line() -> None:
    for key, value, message in [
        ("int8.keep_float", "all", r"^export.int8.keep_float: unknown 'all'; choose from auto, none"),
        ("int8.method", "qlora", r"^export.int8.method: unknown 'qlora'; choose from ptq, qat$"),
        ("int8.max_kl", 0.0, r"^export.int8.max_kl=0.0 must be in \(0, 1\)"),
        ("int8.qat.steps", 0, r"^export.int8.qat.steps must be >= 1, not 0$"),
    ]:
        with pytest.raises(ValueError, match=message):
            ExportSettings.from_config(export_config(**{key: value}))


def test_the_layer_behind_an_outlier_channel_ranks_most_sensitive() -> None:
    model = outlier_net()
    assert weighted_layers(model, torch.zeros(1, 3, SIZE, SIZE)) == ["0", "3", "7"]
    scores = rank_layers(model, _images(16, 2), _images(32, 3))
    assert [s.name for s in scores][0] == "3" and scores[0].kl > 10 * scores[1].kl
    assert 0 < float_weight_share(model, ["3"]) < 1


def test_auto_keeps_the_sensitive_layer_float_in_onnx(tmp_path: Path) -> None:
    """The all-int8 copy misses max_kl on the held-out images; keeping the outlier-fed conv float meets it,
    in the graph (its weight is no longer dequantized) and on the val images."""
    job = _job(tmp_path, outlier_net(), **{"int8.max_kl": 1e-3})
    onnx_format.export(job)
    entry = next(a for a in job.artifacts if a["precision"] == "int8")
    search = entry["keep_float_search"]
    assert entry["float_layers"] == ["3"] and len(entry["float_nodes"]) == 1
    assert search["holdout"] == "held-out training images"
    assert search["tried"][0]["holdout_kl"] > 1e-3 >= search["holdout_kl"] == search["tried"][1]["holdout_kl"]
    graph = onnx.load(str(tmp_path / "model_int8.onnx")).graph
    producers = {out: n.op_type for n in graph.node for out in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert [producers.get(n.input[1]) == "DequantizeLinear" for n in convs] == [True, False]
    plain = _job(tmp_path / "plain", outlier_net(), **{"int8.keep_float": "none"})
    (tmp_path / "plain").mkdir()
    onnx_format.export(plain)
    plain_entry = next(a for a in plain.artifacts if a["precision"] == "int8")
    assert plain_entry["float_nodes"] == [] and plain_entry["keep_float_search"] == {"keep_float": "none"}
    assert entry["top1_agreement"] >= plain_entry["top1_agreement"]


def test_a_few_shot_set_steers_keep_float_by_its_calibration_images(tmp_path: Path) -> None:
    """Every training image calibrates, so none is held out: the search runs on the calibration images
    (in-sample) rather than not at all, and says so in the manifest."""
    job = _job(tmp_path, outlier_net(), **{"int8.max_kl": 1e-3})
    job.read_training = lambda count, held_out: _images(0 if held_out else count, 4)
    onnx_format.export(job)
    entry = next(a for a in job.artifacts if a["precision"] == "int8")
    search = entry["keep_float_search"]
    assert search["holdout"] == "the calibration images (no others)" and search["holdout_images"] == 16
    assert entry["float_layers"] == ["3"] and search["tried"][0]["holdout_kl"] > 1e-3 >= search["holdout_kl"]


def dead_feature_net() -> nn.Module:
    """A head with a weight of 300 on a feature that never fires (a ReLU channel whose input is always
    negative) and small weights on the rest, as a linear probe fitted on 40 photos left one: per-channel
    int8 gives each class's row a step of 300/127, which rounds every live weight to zero."""
    model = tiny_net(features=768)  # a head of 768 x 3 weights: over Core ML's compression threshold
    with torch.no_grad():
        model[3].weight[0] = 0.0
        model[3].bias[0] = -1.0
        model[7].weight.normal_(0, 0.5)
        model[7].weight[:, 0] = 300.0
    return model


def test_auto_keeps_the_coreml_head_float_where_int8_rounds_it_away(tmp_path: Path) -> None:
    """Core ML int8 (and palettized) copies keep the head's weight fp16 by its const name, and the W8A8 copy
    keeps the head's module float, when that brings the held-out KL under max_kl; the all-int8 copies of
    this net answer like fp32 on few photos."""
    settings = {
        "formats": ["coreml"],
        "coreml.quantize": ["int8", "w8a8"],
        "coreml.minimum_deployment_target": "iOS17",
        "int8.max_kl": 1e-3,
    }
    job = _job(tmp_path, dead_feature_net(), **settings)
    coreml_format.export(job)
    assert not job.errors, job.errors
    int8, w8a8 = (next(a for a in job.artifacts if a["precision"] == p) for p in ("int8", "w8a8"))
    assert int8["float_layers"] == ["7"] and int8["fp16_weights"] == ["model_7_weight_to_fp16"]
    assert w8a8["float_layers"][0] == "7"
    for entry in (int8, w8a8):
        search = entry["keep_float_search"]
        assert search["tried"][0]["holdout_kl"] > 1e-3 >= search["holdout_kl"], search
        assert entry["top1_agreement"] >= 0.95
    plain = _job(tmp_path / "plain", dead_feature_net(), **settings, **{"int8.keep_float": "none"})
    (tmp_path / "plain").mkdir()
    coreml_format.export(plain)
    plain_int8, plain_w8a8 = (
        next(a for a in plain.artifacts if a["precision"] == p) for p in ("int8", "w8a8")
    )
    assert plain_int8["float_layers"] == [] and plain_int8["top1_agreement"] < 0.8
    assert plain_w8a8["float_layers"] == [] and plain_w8a8["top1_agreement"] < 0.8
    assert plain_int8["weights_bytes"] < int8["weights_bytes"]


def test_litert_keeps_the_head_float_though_its_output_has_the_signatures_name(tmp_path: Path) -> None:
    """ai-edge-quantizer finds an op by its output tensor's name, and the head's output is named after the
    signature (serving_default_output_0_output), not the module: kept float by that name, the head's
    FULLY_CONNECTED reads float weights and the copy answers like fp32 (before: unchanged KL, 33%
    agreement on brain_mri_fewshot)."""
    job = _job(tmp_path, dead_feature_net(), **{"int8.max_kl": 1e-3, "litert.fp16": False})
    litert_format.export(job)
    entry = next(a for a in job.artifacts if a["precision"] == "int8")
    assert entry["float_layers"][0] == "7" and entry["top1_agreement"] >= 0.95, entry["keep_float_search"]
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tmp_path / "model_int8.tflite"))
    tensors = interpreter.get_tensor_details()
    head = [op for op in interpreter._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
    assert [tensors[head[0]["inputs"][1]]["dtype"]] == [np.float32]


def test_auto_keeps_layers_float_in_litert(tmp_path: Path) -> None:
    """ai-edge-quantizer finds each layer by its module path in litert-torch's op names. A float layer still
    reads the int8 output of the layer in front (as in ExecuTorch), so here the search goes on until the
    first conv is float too, and meets max_kl where the all-int8 copy did not."""
    job = _job(tmp_path, outlier_net(), **{"int8.max_kl": 1e-3, "litert.fp16": False})
    litert_format.export(job)
    entry = next(a for a in job.artifacts if a["precision"] == "int8")
    search = entry["keep_float_search"]
    assert search["tried"][0]["holdout_kl"] > 1e-3 >= search["holdout_kl"], search
    assert entry["float_layers"][0] == "3" and "0" in entry["float_layers"]
    from ai_edge_litert.interpreter import Interpreter

    tensors = Interpreter(model_path=str(tmp_path / "model_int8.tflite")).get_tensor_details()
    names = [t["name"] for t in tensors if t["dtype"] == np.float32]
    float_convs = {m.group(1) for name in names for m in [re.search(r"Conv2d_(\d+);", name)] if m}
    assert {"0", "3"} <= float_convs and entry["top1_agreement"] == 1.0


def test_pt2e_leaves_the_named_layer_float_and_lowers(tmp_path: Path) -> None:
    """The float layer's weight is not dequantized, the mixed module lowers to a .pte that ExecuTorch runs,
    and keeping the outlier-fed conv and the classifier float moves the answers less than all-int8."""
    model = outlier_net()
    example = (torch.from_numpy(_images(1, 5)),)
    quantized = pt2e.ptq(model, example, _images(16, 2), ["3", "7"])
    convs = [n for n in quantized.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    assert ["dequantize" in str(n.args[1].target) for n in convs] == [True, False]
    path = tmp_path / "mixed.pte"
    path.write_bytes(executorch_format._lower(torch.export.export(quantized, example), {}))
    holdout = _images(32, 3)
    mixed = executorch_format.executorch_predictor(path, 1)(holdout)
    np.testing.assert_allclose(mixed, run_batches(torch_predictor(quantized), holdout, 1), atol=0.05)
    reference = run_batches(torch_predictor(model), holdout)
    plain = run_batches(torch_predictor(pt2e.ptq(model, example, _images(16, 2))), holdout, 1)
    assert kl_divergence(reference, mixed) < kl_divergence(reference, plain)


@pytest.mark.slow
def test_qat_lifts_agreement_where_ptq_falls_short() -> None:
    """Calibrated on 2 dim images, PTQ's activation ranges are too narrow for the rest (66% agreement with
    fp32 here); the quantization-aware fine-tune (ranges and weights learning fp32's answers on 256 training
    images) agreed on 95% of the held-out images. Both are measured here."""
    model = tiny_net()
    calibration, training, holdout = _images(2, 2) * 0.25, _images(256, 4), _images(256, 3)
    example = (torch.from_numpy(holdout[:1]),)
    reference = run_batches(torch_predictor(model), holdout).argmax(1)
    ptq = run_batches(torch_predictor(pt2e.ptq(model, example, calibration)), holdout, 1).argmax(1)
    settings = QatSettings(steps=100, lr=1e-3, batch_size=16, images=256)
    weights = [p.detach().clone() for p in model.parameters()]
    quantized, record = pt2e.qat(model, calibration, training, settings)
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))  # fp32 kept
    qat = run_batches(torch_predictor(quantized), holdout, 1).argmax(1)
    ptq_agreement, qat_agreement = (ptq == reference).mean(), (qat == reference).mean()
    assert ptq_agreement < 0.8 and qat_agreement > ptq_agreement + 0.15, (ptq_agreement, qat_agreement)
    assert record["kl_last_steps"] < record["kl_first_steps"]
