"""UpdatableClassifier.mlmodel: the updatable spec, its Swift code, the Linux check of its extractor, the
simulated k-NN and SGD updates, and bad settings.

Exports a small conv net trained on test_export's generated shapes (three classes), once per variant.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import coremltools as ct
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from test_export import CLASSES, DATA_CONFIG, MEAN, METADATA, SIZE, STD, export_config, make_images, train
from torch import nn

from trainer.cli import compose_config
from trainer.export.converters.coreml import neuralnetwork_executor as nn_executor
from trainer.export.converters.coreml.convert import ImageNormalization
from trainer.export.handoff.updatable_swift import CLASS_NAME, SWIFT_NAME
from trainer.export.pipeline import export_all
from trainer.export.settings import ExportSettings
from trainer.export.updatable import model as updatable
from trainer.export.updatable import personalize
from trainer.export.updatable import spec as updatable_spec
from trainer.export.updatable.export import linear_head

pytestmark = pytest.mark.usefixtures("one_thread")


def small_net() -> nn.Module:
    """A conv net with the layer kinds of real backbones: strided, depthwise and residual convs, BN, ReLU6,
    ReLU, SiLU (sigmoid times input), max and average pooling."""
    torch.manual_seed(0)

    class Residual(nn.Module):
        def __init__(self, channels: int):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
                nn.BatchNorm2d(channels),
                nn.SiLU(),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x)

    return nn.Sequential(
        nn.Conv2d(3, 12, 3, stride=2, padding=1),
        nn.BatchNorm2d(12),
        nn.ReLU6(),
        nn.MaxPool2d(3, stride=2, padding=1),
        Residual(12),
        nn.Conv2d(12, 16, 1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(16, len(CLASSES)),
    ).eval()


def export(tmp: Path, kind: str, samples: tuple, **overrides: object) -> dict:
    train_samples, val_samples, model = samples
    cfg = export_config(**{"formats": [], "updatable": kind, "on_device.samples_per_class": 6, **overrides})
    out_dir = tmp / kind
    manifest = export_all(
        model,
        classes=CLASSES,
        data_config=DATA_CONFIG,
        out_dir=out_dir,
        cfg=cfg,
        calibration_paths=[p for p, _ in train_samples],
        val_samples=val_samples,
        provenance=METADATA,
        headless=model[:-2],
        head=model[-2:],
        train_samples=train_samples,
    )
    return {"manifest": manifest, "out": out_dir, "entry": manifest["artifacts"][0], "cfg": cfg}


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    root = tmp_path_factory.mktemp("updatable")
    train_samples = make_images(root / "train", per_class=16, seed=0)
    val_samples = make_images(root / "val", per_class=8, seed=1)
    return train_samples, val_samples, train(small_net(), train_samples, steps=80)


@pytest.fixture(scope="module")
def knn(samples: tuple, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return export(tmp_path_factory.mktemp("knn"), "knn", samples)


@pytest.fixture(scope="module")
def head(samples: tuple, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The small net's embeddings are small: a larger on-device learning rate than the default's."""
    overrides = {"on_device.learning_rate": 0.01, "on_device.epochs": 10}
    return export(tmp_path_factory.mktemp("head"), "head", samples, **overrides)


def load(result: dict) -> ct.proto.Model_pb2.Model:
    return ct.utils.load_spec(str(result["out"] / updatable.MODEL_NAME))


@pytest.mark.parametrize("variant", ["knn", "head"])
def test_spec_is_an_updatable_pipeline(variant: str, request: pytest.FixtureRequest) -> None:
    result = request.getfixturevalue(variant)
    manifest, entry = result["manifest"], result["entry"]
    assert manifest["errors"] == [] and manifest["warnings"] == []
    assert (
        entry["path"] == updatable.MODEL_NAME
        and entry["kind"] == "updatable"
        and entry["updatable"] == variant
    )
    assert manifest["handoff"] == ["labels.txt", SWIFT_NAME, "README.md"]
    norm = ImageNormalization.from_stats(MEAN, STD)
    path = result["out"] / updatable.MODEL_NAME
    assert updatable_spec.check_spec(path, kind=variant, image_size=SIZE, norm=norm, classes=CLASSES) == []
    spec = load(result)
    extractor, last = updatable_spec.sub_models(spec)
    assert spec.isUpdatable and last.isUpdatable and not extractor.isUpdatable
    assert spec.specificationVersion == 4  # iOS 13, the first Core ML with on-device update
    assert [f.name for f in spec.description.trainingInput] == ["image", "classLabel"]
    meta = spec.description.metadata
    assert meta.userDefined["updatable"] == variant and meta.userDefined["backbone"] == "mobilenet_v2"
    assert meta.shortDescription and meta.versionString and meta.author and meta.license


def test_knn_is_seeded_with_a_class_balanced_sample(knn: dict) -> None:
    _, last = updatable_spec.sub_models(load(knn))
    index = last.kNearestNeighborsClassifier
    labels = list(index.stringClassLabels.vector)
    assert {c: labels.count(c) for c in CLASSES} == {c: 6 for c in CLASSES}
    assert index.numberOfNeighbors.defaultValue == knn["cfg"].on_device.k
    assert len(index.nearestNeighborsIndex.floatSamples) == 18
    assert index.nearestNeighborsIndex.numberOfDimensions == 16


def test_head_carries_the_trained_weights_and_update_parameters(head: dict, samples: tuple) -> None:
    spec = load(head)
    _, last = updatable_spec.sub_models(spec)
    weight, bias = updatable_spec.head_weights(last)
    trained_weight, trained_bias = linear_head(samples[2][-2:])
    np.testing.assert_array_equal(weight, trained_weight)
    np.testing.assert_array_equal(bias, trained_bias)
    opts = head["cfg"].on_device
    assert updatable_spec.update_parameters(spec) == {
        "learningRate": opts.learning_rate,
        "miniBatchSize": opts.batch_size,
        "epochs": opts.epochs,
    }
    assert [layer.name for layer in last.neuralNetworkClassifier.layers if layer.isUpdatable] == ["head"]
    assert head["entry"]["top1_agreement"] == 1.0  # the head on the spec's embeddings picks PyTorch's class


@pytest.mark.parametrize("variant", ["knn", "head"])
def test_swift_uses_the_spec_names(variant: str, request: pytest.FixtureRequest) -> None:
    """Parse the generated Swift: its feature names and MLParameterKeys are the spec's."""
    result = request.getfixturevalue(variant)
    spec = load(result)
    swift = (result["out"] / SWIFT_NAME).read_text()
    constants = dict(re.findall(r'static let (\w+) = "([^"]+)"', swift))
    assert [constants["imageInput"], constants["labelInput"]] == [
        f.name for f in spec.description.trainingInput
    ]
    assert constants["probabilitiesOutput"] == spec.description.predictedProbabilitiesName
    assert constants["labelInput"] == spec.description.predictedFeatureName
    keys = re.findall(r"parameters\[\.(\w+)\]", swift)
    assert keys == list(updatable_spec.update_parameters(spec))
    assert f'forResource: "{Path(updatable.MODEL_NAME).stem}", withExtension: "mlmodelc"' in swift
    for call in (
        "MLUpdateTask(",
        "MLModel.compileModel",
        ".applicationSupportDirectory",
        "write(to:",
        "MLModel(contentsOf:",
    ):
        assert call in swift
    if variant == "knn":
        assert "never seen" in swift
    export_id = spec.description.metadata.userDefined[constants["exportIdKey"]]
    assert re.fullmatch(r"[0-9a-f]{16}", export_id), "the id the app compares to keep or drop its copy"


@pytest.mark.parametrize("variant", ["knn", "head"])
def test_extractor_spec_computes_the_headless_model(variant: str, request: pytest.FixtureRequest) -> None:
    stats = request.getfixturevalue(variant)["entry"]["extractor_vs_pytorch"]
    assert stats["max_abs_diff"] <= stats["tolerance"] and stats["min_cosine_similarity"] > 0.99999


def test_nn_executor_matches_pytorch_layer_by_layer(samples: tuple) -> None:
    """Every layer type of the converted small net, with ImageNet's unequal stds folded into the input and
    the k-NN's L2 normalization at the end."""
    model = samples[2]
    norm = ImageNormalization.from_stats(MEAN, STD)
    extractor = updatable.convert_extractor(model[:-2], SIZE, norm, l2_normalize=True)
    types = set(nn_executor.layer_types(extractor.neuralNetwork))
    assert {
        "convolution",
        "batchnorm",
        "clip",
        "activation",
        "pooling",
        "add",
        "multiply",
        "l2normalize",
    } <= types
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 3, SIZE, SIZE)).astype(np.float32)
    image = nn_executor.preprocess(extractor.neuralNetwork, "image", pixels)
    out = nn_executor.run_network(extractor.neuralNetwork, {"image": image})["embedding"].reshape(3, -1)
    normalized = (pixels / 255.0 - np.reshape(MEAN, (1, 3, 1, 1))) / np.reshape(STD, (1, 3, 1, 1))
    with torch.no_grad():
        reference = nn.functional.normalize(model[:-2](torch.from_numpy(normalized.astype(np.float32))))
    np.testing.assert_allclose(out, reference.numpy(), atol=1e-5)


def test_knn_rule() -> None:
    index = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0], [0.0, 6.0], [9.0, 9.0]])
    labels = np.array([0, 0, 1, 1, 2])
    queries = np.array([[0.2, 0.1], [0.0, 5.4], [8.0, 8.0], [0.5, 2.9]])
    np.testing.assert_array_equal(personalize.knn_predict(index, labels, queries, 1), [0, 1, 2, 1])
    np.testing.assert_array_equal(personalize.knn_predict(index, labels, queries, 3), [0, 1, 1, 0])
    # k=2 with one vote each: the nearest neighbour's label wins
    np.testing.assert_array_equal(personalize.knn_predict(index, labels, np.array([[0.0, 2.4]]), 2), [0])


def test_sgd_update_matches_core_ml_semantics_in_torch() -> None:
    """Mean cross-entropy of softmax per mini-batch, plain SGD: torch.optim.SGD on the same batches."""
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    x, y = rng.normal(size=(5, 4)).astype(np.float32), np.array([2, 2, 0, 2, 1])
    w, b = personalize.sgd_update(weight, bias, x, y, learning_rate=0.1, batch_size=5, epochs=7)
    layer = nn.Linear(4, 3)
    layer.weight.data, layer.bias.data = torch.from_numpy(weight.copy()), torch.from_numpy(bias.copy())
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(7):
        optimizer.zero_grad()
        nn.functional.cross_entropy(layer(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        optimizer.step()
    np.testing.assert_allclose(w, layer.weight.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(b, layer.bias.detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("variant", ["knn", "head"])
def test_personalization_experiment(variant: str, request: pytest.FixtureRequest) -> None:
    entry = request.getfixturevalue(variant)["entry"]
    result = entry["personalization"]
    assert entry["val_top1"] >= 0.9
    assert result["holdout_class"] == CLASSES[-1] and result["update_examples"] == 5
    assert (result["holdout_val_images"], result["other_val_images"]) == (8, 16)
    assert (
        result["holdout_top1_after"] >= 0.75 and result["holdout_top1_after"] > result["holdout_top1_before"]
    )
    assert result["others_drop_points"] <= 2.0
    assert result["holdout_top1_before"] == 0.0  # held out of the k-NN index, or pushed down in the head


def test_model_card_explains_the_variant(knn: dict) -> None:
    card = (knn["out"] / "README.md").read_text()
    assert "## On-device training: `UpdatableClassifier.mlmodel` (knn)" in card
    assert "ML Programs (`.mlpackage`) cannot be trained" in card and "Personalization" in card


def test_bad_settings_fail_early_with_clear_errors(samples: tuple, tmp_path: Path) -> None:
    cfg = compose_config(["export.updatable=bogus"])
    with pytest.raises(
        ValueError, match=r"export.updatable: unknown 'bogus'; choose from null \(none\), knn, head"
    ):
        ExportSettings.from_config(cfg.export)
    with pytest.raises(
        ValueError, match=r"samples_per_class=17 .* class 'red_disc' has 16 training image\(s\) \(48"
    ):
        export(tmp_path, "knn", samples, **{"on_device.samples_per_class": 17})
    with pytest.raises(ValueError, match=r"holdout_class: 'cats' is not a class"):
        export(tmp_path, "head", samples, **{"on_device.holdout_class": "cats"})
    assert not (tmp_path / "knn").exists() and not (tmp_path / "head").exists()
    with pytest.raises(
        ValueError, match="export.updatable=head needs a classifier head that is one linear layer"
    ):
        linear_head(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))


def test_train_checks_the_setting_before_training(tmp_path: Path) -> None:
    from trainer.training.run import train as run_training

    cfg = compose_config(
        ["dataset.train_per_class=4", "dataset.val_per_class=2", "export.updatable=knn"], str(tmp_path)
    )
    OmegaConf.update(cfg, "dataset.root", str(tmp_path / "demo"))
    with pytest.raises(ValueError, match=r"samples_per_class=10 .* has 4 training image"):
        run_training(cfg)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.skipif(
    sys.platform != "darwin" or shutil.which("xcrun") is None,
    reason="MLUpdateTask runs only on macOS with Xcode's Swift toolchain; this is " + sys.platform,
)
def test_real_update_task_on_macos(knn: dict, samples: tuple, tmp_path: Path) -> None:
    """Compile PersonalizedClassifier.swift with a small driver and run the real MLUpdateTask path: learn a
    new label from three photos, save, reload from the folder, classify."""
    model_path = knn["out"] / updatable.MODEL_NAME
    photos = [p for p, label in samples[1] if label == 0][:3]
    driver = tmp_path / "main.swift"
    driver.write_text(
        "import CoreGraphics\nimport Foundation\nimport ImageIO\n"
        "func load(_ p: String) -> CGImage { CGImageSourceCreateImageAtIndex("
        "CGImageSourceCreateWithURL(URL(fileURLWithPath: p) as CFURL, nil)!, 0, nil)! }\n"
        f'let classifier = try {CLASS_NAME}(bundled: URL(fileURLWithPath: "{model_path}"), '
        f'folder: URL(fileURLWithPath: "{tmp_path}"))\n'
        "let photos = [" + ", ".join(f'"{p}"' for p in photos) + "].map(load)\n"
        'try await classifier.update(with: photos.map { ($0, .up, "my_new_class") })\n'
        f"let reloaded = try {CLASS_NAME}(bundled: nil, folder: URL(fileURLWithPath: "
        f'"{tmp_path}"))\n'
        "print(try await reloaded.classify(photos[0], orientation: .up).label)\n"
    )
    binary = tmp_path / "driver"
    sources = [str(knn["out"] / SWIFT_NAME), str(driver)]
    subprocess.run(["xcrun", "swiftc", "-o", str(binary), *sources], check=True)
    assert (
        subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout.strip()
        == "my_new_class"
    )
