"""UpdatableClassifier.mlmodel: a model the app keeps training on its user's photos with MLUpdateTask.

Core ML stores update parameters (loss, optimizer, epochs) only in NeuralNetwork specs, and updatable k-NN
classifiers are their own spec type; ML Programs (.mlpackage) cannot be updated on device. So the model is a
PipelineClassifier of two NeuralNetwork-era specs saved as one .mlmodel (spec version 4, iOS 13+):

1. the fine-tuned backbone without its head, converted to a NeuralNetwork (fp32, not updatable): raw-pixel
   RGB input with the training normalization folded in, exactly like the other Core ML artifacts; then
2. `knn`: an updatable k-nearest-neighbours classifier seeded with embeddings of a class-balanced sample of
   training images (an update adds the user's examples, with any label, to its index), or
   `head`: the trained linear head as an updatable inner-product layer with softmax, categorical
   cross-entropy loss and SGD (learning rate, mini-batch size and epochs stored as update parameters).

Inference inputs: `image`. Training inputs (what MLUpdateTask's batch provides): `image` and `classLabel`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import coremltools as ct
import numpy as np
from coremltools.models import datatypes
from coremltools.models.nearest_neighbors import KNearestNeighborsClassifierBuilder
from coremltools.models.neural_network import NeuralNetworkBuilder, SgdParams
from coremltools.models.pipeline import PipelineClassifier
from torch import nn

from trainer.export.converters.coreml.convert import (
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    LABEL_OUTPUT,
    PROBS_OUTPUT,
    CoreMLWrapper,
    ImageNormalization,
    image_input,
)
from trainer.export.converters.tracing import trace
from trainer.export.settings import ExportSettings
from trainer.utils.files import atomic_output

MODEL_NAME = "UpdatableClassifier.mlmodel"
EXPORT_ID_KEY = "export_id"  # user-defined metadata: which export the bundled model came from
LOGITS = "logits"
LOSS_LAYER = "loss"
HEAD_LAYER = "head"
UPDATE_PARAMETERS = {"knn": (), "head": ("learningRate", "miniBatchSize", "epochs")}  # MLParameterKey names
L2_EPS = 1e-12  # added to the squared norm before the square root (a zero embedding stays zero)
UNKNOWN_LABEL = "unknown"  # what an empty k-NN index would predict; never seen once seeded


def _append(network: Any, kind: str, name: str, source: str, target: str) -> Any:
    """Add a `kind` layer reading blob `source` and writing `target`; returns its params to fill in."""
    layer = network.layers.add()
    layer.name = name
    layer.input.append(source)
    layer.output.append(target)
    return getattr(layer, kind)


def convert_extractor(
    headless: nn.Module, image_size: int, norm: ImageNormalization, *, l2_normalize: bool = False
) -> Any:
    """The headless backbone as a NeuralNetwork spec: raw-pixel `image` in, (D,) float32 `embedding` out.

    `l2_normalize` scales each embedding to unit length (the k-NN's squared Euclidean distance then ranks
    neighbours by cosine similarity, which suits CNN features better: 0.889 vs 0.778 val top-1 with 10
    images per class on ants/bees).
    """
    import torch

    wrapper = CoreMLWrapper(headless, norm, classifier=False).eval()
    example = torch.rand(1, 3, image_size, image_size)
    dim = int(wrapper(example).shape[1])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        mlmodel = ct.convert(
            trace(wrapper, example),
            inputs=[image_input(image_size, norm)],
            outputs=[ct.TensorType(name=EMBEDDING_OUTPUT)],
            convert_to="neuralnetwork",
        )
    spec = mlmodel.get_spec()
    # the converter leaves a (1, D) tensor; the k-NN or head input is a (D,) vector: reshape to exactly that
    network = spec.neuralNetwork
    last = next(layer for layer in network.layers if EMBEDDING_OUTPUT in layer.output)
    blob = f"{EMBEDDING_OUTPUT}_batch"
    last.output[list(last.output).index(EMBEDDING_OUTPUT)] = blob
    if l2_normalize:  # Core ML's l2normalize wants rank >= 3: (D, 1, 1), normalized over all of it
        _append(network, "reshapeStatic", "embedding_chw", blob, "embedding_chw").targetShape[:] = [dim, 1, 1]
        _append(network, "l2normalize", "embedding_unit", "embedding_chw", "embedding_unit").epsilon = L2_EPS
        blob = "embedding_unit"
    _append(network, "reshapeStatic", "embedding_vector", blob, EMBEDDING_OUTPUT).targetShape[:] = [dim]
    output = spec.description.output[0].type.multiArrayType
    output.dataType = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    del output.shape[:]
    output.shape.append(dim)
    return spec


def _rename_probabilities(spec: Any) -> None:
    """Name the probabilities output like the other Core ML classifiers (`classLabel_probs`)."""
    for output in spec.description.output:
        if output.name == spec.description.predictedProbabilitiesName:
            output.name = PROBS_OUTPUT
    spec.description.predictedProbabilitiesName = PROBS_OUTPUT


def knn_spec(embeddings: np.ndarray, labels: Sequence[str], k: int) -> Any:
    """An updatable k-NN classifier (squared Euclidean distance, uniform vote) seeded with `embeddings`."""
    builder = KNearestNeighborsClassifierBuilder(
        input_name=EMBEDDING_OUTPUT,
        output_name=LABEL_OUTPUT,
        number_of_dimensions=int(embeddings.shape[1]),
        default_class_label=UNKNOWN_LABEL,
        number_of_neighbors=k,
        weighting_scheme="uniform",
        index_type="linear",
    )
    builder.add_samples(embeddings.astype(np.float32).tolist(), list(labels))
    builder.is_updatable = True
    _rename_probabilities(builder.spec)
    return builder.spec


def head_spec(
    weight: np.ndarray,
    bias: np.ndarray,
    classes: Sequence[str],
    *,
    learning_rate: float,
    batch_size: int,
    epochs: int,
) -> Any:
    """The linear head as an updatable NeuralNetworkClassifier: inner product, softmax, cross-entropy, SGD."""
    num_classes, dim = weight.shape
    builder = NeuralNetworkBuilder(
        [(EMBEDDING_OUTPUT, datatypes.Array(dim))],
        [(PROBS_OUTPUT, datatypes.Array(num_classes))],
        mode="classifier",
        disable_rank5_shape_mapping=False,
    )
    builder.add_inner_product(
        HEAD_LAYER,
        W=weight.astype(np.float32),
        b=bias.astype(np.float32),
        input_channels=dim,
        output_channels=num_classes,
        has_bias=True,
        input_name=EMBEDDING_OUTPUT,
        output_name=LOGITS,
    )
    builder.add_softmax("probabilities", LOGITS, PROBS_OUTPUT)
    builder.set_class_labels(list(classes), predicted_feature_name=LABEL_OUTPUT)
    _rename_probabilities(builder.spec)
    builder.make_updatable([HEAD_LAYER])
    with contextlib.redirect_stdout(io.StringIO()):  # coremltools prints a line about the target
        builder.set_categorical_cross_entropy_loss(LOSS_LAYER, input=PROBS_OUTPUT)
    batches = sorted({1, 2, 4, 5, 8, 16, 32, batch_size})  # the values the app may pass as miniBatchSize
    sgd = SgdParams(lr=learning_rate, batch=batch_size, momentum=0.0)
    sgd.set_batch(batch_size, batches)
    builder.set_sgd_optimizer(sgd)
    builder.spec.neuralNetworkClassifier.updateParams.optimizer.sgdOptimizer.learningRate.range.maxValue = 1.0
    builder.set_epochs(epochs, allowed_set=sorted({1, 5, 10, 20, 50, 100, epochs}))
    return builder.spec


def pipeline_spec(extractor: Any, last: Any, classes: Sequence[str]) -> Any:
    """Feature extractor then the updatable classifier, as one updatable PipelineClassifier."""
    image = extractor.description.input[0]
    pipeline = PipelineClassifier(  # coremltools' datatypes have no image: the input is replaced below
        [(INPUT_NAME, datatypes.Array(3))],
        list(classes),
        output_features=[LABEL_OUTPUT, PROBS_OUTPUT],
        training_features=None,
    )
    spec = pipeline.spec
    spec.description.input[0].CopyFrom(image)
    pipeline.add_model(extractor)
    pipeline.add_model(last)
    pipeline.make_updatable()
    del spec.description.trainingInput[:]
    spec.description.trainingInput.add().CopyFrom(image)
    label = spec.description.trainingInput.add()
    label.name = LABEL_OUTPUT
    label.type.stringType.SetInParent()
    spec.specificationVersion = max(
        spec.specificationVersion, extractor.specificationVersion, last.specificationVersion
    )
    return spec


def save(
    spec: Any, path: Path, *, settings: ExportSettings, model_metadata: dict[str, Any], kind: str
) -> None:
    """Fill Xcode's metadata and feature descriptions and write the .mlmodel atomically."""
    meta = spec.description.metadata
    meta.author, meta.license, meta.versionString = settings.author, settings.license, settings.version
    meta.shortDescription = f"Updatable ({kind}) {settings.description}"
    for key, value in {**model_metadata, "updatable": kind}.items():
        meta.userDefined[key] = value if isinstance(value, str) else json.dumps(value)
    # Which export this is: the app keeps an updated copy only while the bundled model has the same id, so
    # an app update that ships a retrained model replaces the old personalized one.
    meta.userDefined[EXPORT_ID_KEY] = hashlib.sha256(spec.SerializeToString()).hexdigest()[:16]
    notes = {
        INPUT_NAME: "RGB image, raw pixels (normalization is built into the model)",
        LABEL_OUTPUT: "Most likely class (for training: the true label of the image)",
        PROBS_OUTPUT: "Probability (k-NN: share of the k nearest examples) of each class",
    }
    for feature in [*spec.description.input, *spec.description.output, *spec.description.trainingInput]:
        feature.shortDescription = notes.get(feature.name, "")
    with atomic_output(path) as tmp:
        ct.utils.save_spec(spec, str(tmp))
