"""Reading a saved UpdatableClassifier.mlmodel back: its two sub-models, the head's weights, its update
parameters, and the structural checks that the Swift code's assumptions hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import coremltools as ct
import numpy as np

from trainer.export.converters.coreml.convert import (
    INPUT_NAME,
    LABEL_OUTPUT,
    PROBS_OUTPUT,
    ImageNormalization,
)
from trainer.export.updatable.model import HEAD_LAYER


def sub_models(spec: Any) -> tuple[Any, Any]:
    """The (feature extractor, updatable classifier) specs of a saved pipeline."""
    extractor, last = spec.pipelineClassifier.pipeline.models
    return extractor, last


def check_spec(
    path: Path, *, kind: str, image_size: int, norm: ImageNormalization, classes: list[str]
) -> list[str]:
    """Problems with a saved UpdatableClassifier.mlmodel (empty: it is what the Swift code uses)."""
    spec = ct.utils.load_spec(str(path))
    problems = []
    if spec.WhichOneof("Type") != "pipelineClassifier":
        return [f"{path.name} is a {spec.WhichOneof('Type')}, not a pipelineClassifier"]
    extractor, last = sub_models(spec)
    if not spec.isUpdatable or not last.isUpdatable or extractor.isUpdatable:
        problems.append("only the pipeline and its last model must be marked updatable")
    if extractor.WhichOneof("Type") != "neuralNetwork":
        problems.append(f"feature extractor is a {extractor.WhichOneof('Type')}, not a neuralNetwork")
    training = [(f.name, f.type.WhichOneof("Type")) for f in spec.description.trainingInput]
    if training != [(INPUT_NAME, "imageType"), (LABEL_OUTPUT, "stringType")]:
        problems.append(
            f"training inputs are {training}, expected image '{INPUT_NAME}' and string '{LABEL_OUTPUT}'"
        )
    image = spec.description.input[0].type.imageType
    if (image.width, image.height) != (image_size, image_size):
        problems.append(f"input is {image.width}x{image.height}, expected {image_size}x{image_size}")
    scaler = extractor.neuralNetwork.preprocessing[0].scaler
    bias = [scaler.redBias, scaler.greenBias, scaler.blueBias]
    if not np.allclose(scaler.channelScale, norm.scale, rtol=1e-6) or not np.allclose(
        bias, norm.bias, rtol=1e-6
    ):
        problems.append(
            f"image scale/bias are {scaler.channelScale}/{bias}, expected {norm.scale}/{list(norm.bias)}"
        )
    outputs = {o.name: o.type.WhichOneof("Type") for o in spec.description.output}
    if outputs != {LABEL_OUTPUT: "stringType", PROBS_OUTPUT: "dictionaryType"}:
        problems.append(f"outputs are {outputs}, expected '{LABEL_OUTPUT}' and '{PROBS_OUTPUT}'")
    if kind == "knn":
        problems += _knn_problems(last, classes)
    else:
        problems += _head_problems(last, classes)
    return problems


def _knn_problems(last: Any, classes: list[str]) -> list[str]:
    if last.WhichOneof("Type") != "kNearestNeighborsClassifier":
        return [f"last model is a {last.WhichOneof('Type')}, not a kNearestNeighborsClassifier"]
    seeded = set(last.kNearestNeighborsClassifier.stringClassLabels.vector)
    return (
        []
        if seeded == set(classes)
        else [f"k-NN index holds labels {sorted(seeded)}, expected {sorted(classes)}"]
    )


def _head_problems(last: Any, classes: list[str]) -> list[str]:
    if last.WhichOneof("Type") != "neuralNetworkClassifier":
        return [f"last model is a {last.WhichOneof('Type')}, not a neuralNetworkClassifier"]
    network = last.neuralNetworkClassifier
    problems = []
    if list(network.stringClassLabels.vector) != list(classes):
        problems.append(f"head labels are {list(network.stringClassLabels.vector)}, expected {classes}")
    updatable = [layer.name for layer in network.layers if layer.isUpdatable]
    if updatable != [HEAD_LAYER]:
        problems.append(f"updatable layers are {updatable}, expected ['{HEAD_LAYER}']")
    params = network.updateParams
    if [loss.WhichOneof("LossLayerType") for loss in params.lossLayers] != [
        "categoricalCrossEntropyLossLayer"
    ]:
        problems.append("the loss is not one categorical cross-entropy layer")
    if params.optimizer.WhichOneof("OptimizerType") != "sgdOptimizer" or params.epochs.defaultValue < 1:
        problems.append("the update has no SGD optimizer or no epochs")
    return problems


def head_weights(last: Any) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) of the updatable inner-product layer of a saved head classifier."""
    layer = next(layer for layer in last.neuralNetworkClassifier.layers if layer.name == HEAD_LAYER)
    p = layer.innerProduct
    weight = np.asarray(p.weights.floatValue, np.float32).reshape(p.outputChannels, p.inputChannels)
    return weight, np.asarray(p.bias.floatValue, np.float32)


def update_parameters(spec: Any) -> dict[str, Any]:
    """The update parameters the app can override (MLParameterKey name -> default), from a saved pipeline."""
    _, last = sub_models(spec)
    if last.WhichOneof("Type") != "neuralNetworkClassifier":
        return {}
    params = last.neuralNetworkClassifier.updateParams
    sgd = params.optimizer.sgdOptimizer
    return {
        "learningRate": sgd.learningRate.defaultValue,
        "miniBatchSize": sgd.miniBatchSize.defaultValue,
        "epochs": params.epochs.defaultValue,
    }
