"""Export step for UpdatableClassifier.mlmodel: build it, check its spec, and measure it as the phone would.

On Linux Core ML cannot run it, so the feature extractor's layers are evaluated from the saved spec
(converters/coreml/neuralnetwork_executor.py) and compared with the headless PyTorch model; its embeddings
then feed the k-NN rule or the head (with the parameters read back from the spec) for val top-1 before any
update and for the personalization experiment (hold one class out, learn it from a few examples, see what
the others lose).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import coremltools as ct
import numpy as np
import torch
from torch import nn

from trainer.data.data_config import DataConfig
from trainer.export.converters.coreml import neuralnetwork_executor as nn_executor
from trainer.export.converters.coreml.convert import INPUT_NAME, ImageNormalization
from trainer.export.converters.coreml.target import NOT_MACOS_REASON
from trainer.export.pixels import PixelNormalization
from trainer.export.updatable import model as updatable
from trainer.export.updatable import personalize
from trainer.export.updatable import spec as updatable_spec
from trainer.export.verify import Predict, compare, fp32_problems, load_inputs, run_batches, torch_predictor

if TYPE_CHECKING:
    from trainer.export.job import ExportJob

log = logging.getLogger(__name__)

HELD_OUT_OF = {  # what the experiment holds the class out of: the backbone was fine-tuned with it
    "knn": "the k-NN index (the backbone was fine-tuned with this class)",
    "head": "the head, re-fitted on the other classes (the backbone was fine-tuned with this class)",
}
HOLDOUT_FIT_PER_CLASS = 50  # training images per other class the head is re-fitted on (the extractor is slow)
MAX_OTHERS_DROP = 2.0  # points of top-1 the other classes may lose when the app learns a new one
SIMULATED = (
    "figures come from the spec's layers evaluated in PyTorch "
    "(trainer.export.converters.coreml.neuralnetwork_executor) and Core ML's "
    "k-NN rule or SGD update in numpy (trainer.export.updatable.personalize)"
)


def linear_head(head: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) of a classifier head that is one nn.Linear, possibly behind dropout or a flatten."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    others = [
        type(m).__name__
        for m in head.modules()
        if not isinstance(m, nn.Linear | nn.Dropout | nn.Identity | nn.Flatten | nn.Sequential)
    ]
    if len(linears) != 1 or others:
        raise ValueError(
            "export.updatable=head needs a classifier head that is one linear layer; this backbone's head "
            f"is {head.__class__.__name__} ({len(linears)} linear, other layers {others}); "
            "use export.updatable=knn"
        )
    linear = linears[0]
    bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
    return linear.weight.detach().cpu().numpy(), bias.detach().cpu().numpy()


def extractor_predictor(extractor: Any, mean: Sequence[float], std: Sequence[float]) -> Predict:
    """Embeddings the spec computes for normalized (N, 3, S, S) inputs, fed as an app's raw pixels."""
    network = extractor.neuralNetwork
    norm = PixelNormalization.of(mean, std)

    def predict(batch: np.ndarray) -> np.ndarray:
        pixels = norm.pixels(batch).astype(np.float32)
        image = nn_executor.preprocess(network, INPUT_NAME, pixels)
        out = nn_executor.run_network(network, {INPUT_NAME: image})[updatable.EMBEDDING_OUTPUT]
        return out.reshape(len(batch), -1)

    return predict


def _class_sample(
    samples: Sequence[tuple[str, int]], label: int, count: int | None, skip: set[str]
) -> list[str]:
    """`count` (None: all) paths of class `label` spread across its samples, leaving out `skip`."""
    paths = [p for p, y in samples if y == label and p not in skip]
    if count is None or count >= len(paths):
        return paths
    return [paths[i * len(paths) // count] for i in range(count)]


@dataclass
class _Embedder:
    """Loads training images and embeds them with the exported extractor, as the phone would."""

    predict: Predict
    samples: Sequence[tuple[str, int]]
    data_config: DataConfig

    def __call__(self, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of the readable `paths`, and their labels."""
        inputs, kept, _ = load_inputs(paths, self.data_config)
        label_of = dict(self.samples)
        return run_batches(self.predict, inputs), np.asarray([label_of[paths[i]] for i in kept], np.int64)

    def per_class(self, classes: range, count: int | None, skip: set[str] = frozenset()) -> list[str]:
        return [p for c in classes for p in _class_sample(self.samples, c, count, skip)]


def export_updatable(
    job: ExportJob,
    *,
    headless: nn.Module | None,
    head: nn.Module | None,
    train_samples: Sequence[tuple[str, int]],
) -> bool:
    """Write UpdatableClassifier.mlmodel, list and measure it; True when it was written (the pipeline then
    writes its Swift code with the other hand-off files)."""
    kind, opts = job.settings.updatable, job.settings.on_device
    classes, data_config = job.classes, job.data_config
    image_size, mean, std = data_config.size, data_config.mean, data_config.std
    if headless is None or (kind == "head" and head is None):
        job.fail(
            "updatable", [f"export.updatable={kind} needs the model's feature extractor and head modules"]
        )
        return False
    path = job.out_dir / updatable.MODEL_NAME
    with job.guard(f"updatable_{kind}"):
        norm = ImageNormalization.from_stats(mean, std)
        headless = copy.deepcopy(headless).cpu().eval()
        extractor = updatable.convert_extractor(headless, image_size, norm, l2_normalize=kind == "knn")
        missing = nn_executor.unsupported_layers(extractor.neuralNetwork)
        if missing:
            raise ValueError(f"the feature extractor uses layer types the Linux check cannot run: {missing}")
        embed = _Embedder(extractor_predictor(extractor, mean, std), train_samples, data_config)
        seeds = embed.per_class(range(len(classes)), opts.samples_per_class)
        if kind == "knn":
            seed_embeddings, seed_labels = embed(seeds)
            last = updatable.knn_spec(seed_embeddings, [classes[y] for y in seed_labels], opts.k)
        else:
            weight, bias = linear_head(head)
            last = updatable.head_spec(
                weight,
                bias,
                classes,
                learning_rate=opts.learning_rate,
                batch_size=opts.batch_size,
                epochs=opts.epochs,
            )
        spec = updatable.pipeline_spec(extractor, last, classes)
        updatable.save(spec, path, settings=job.settings, model_metadata=job.model_metadata, kind=kind)
        entry = job.add(path, format="coreml", precision="fp32", kind="updatable", updatable=kind)
        job.fail(
            entry["name"],
            updatable_spec.check_spec(path, kind=kind, image_size=image_size, norm=norm, classes=classes),
        )
        saved = ct.utils.load_spec(str(path))
        entry.update(
            {
                "training_inputs": [f.name for f in saved.description.trainingInput],
                "update_parameters": updatable_spec.update_parameters(saved),
                "minimum_deployment_target": "iOS13",
                "latency_ms": None,
                "reason": f"{NOT_MACOS_REASON}; {SIMULATED}",
            }
        )
        if len(job.inputs):
            _measure(job, entry, saved, headless, embed, job.reference, classes, set(seeds))
    return path.exists()


def _measure(
    job: ExportJob,
    entry: dict[str, Any],
    spec: Any,
    headless: nn.Module,
    embed: _Embedder,
    reference_logits: np.ndarray,
    classes: list[str],
    seeds: set[str],
) -> None:
    """Extractor agreement with PyTorch, val top-1 before any update, and the personalization experiment."""
    _, last = updatable_spec.sub_models(spec)
    kind = "knn" if last.WhichOneof("Type") == "kNearestNeighborsClassifier" else "head"
    val = run_batches(embed.predict, job.inputs)
    unit = kind == "knn"  # the k-NN's extractor ends with an L2 normalization

    def pytorch(x: torch.Tensor) -> torch.Tensor:
        out = headless(x).flatten(1)
        return nn.functional.normalize(out, dim=1, eps=0.0) if unit else out

    reference = run_batches(torch_predictor(pytorch), job.inputs)
    stats = compare(reference, val, None)
    job.fail(entry["name"], fp32_problems(f"{entry['name']} feature extractor", stats, reference))
    entry["extractor_vs_pytorch"] = stats
    opts = job.settings.on_device
    holdout = classes.index(opts.holdout_class) if opts.holdout_class is not None else len(classes) - 1
    experiment = personalize.Experiment(
        val=val,
        val_labels=job.labels,
        update=embed(embed.per_class(range(holdout, holdout + 1), opts.shots, seeds))[0],
        holdout=holdout,
        holdout_name=classes[holdout],
    )
    if kind == "knn":
        knn = last.kNearestNeighborsClassifier
        index = np.asarray([s.vector for s in knn.nearestNeighborsIndex.floatSamples], np.float32)
        labels = np.asarray([classes.index(label) for label in knn.stringClassLabels.vector])
        k = knn.numberOfNeighbors.defaultValue
        predicted = personalize.knn_predict(index, labels, val, k)
        result = personalize.knn_experiment(experiment, index, labels, k)
    else:
        weight, bias = updatable_spec.head_weights(last)
        predicted = personalize.head_predict(weight, bias, val)
        entry["top1_agreement"] = float((predicted == reference_logits.argmax(1)).mean())
        others = [c for c in range(len(classes)) if c != holdout]
        refit = embed(embed.per_class(others, HOLDOUT_FIT_PER_CLASS))
        params = updatable_spec.update_parameters(spec)
        sgd = {
            "learning_rate": params["learningRate"],
            "batch_size": params["miniBatchSize"],
            "epochs": params["epochs"],
        }
        result = personalize.head_experiment(experiment, weight, bias, refit, sgd)
    entry["val_top1"] = float((predicted == job.labels).mean())
    result["held_out_of"] = HELD_OUT_OF[kind]
    entry["personalization"] = result
    log.info(
        "export: %s val top-1 %.3f; learning '%s' from %d examples: top-1 on it %s -> %s, others %s -> %s",
        entry["name"],
        entry["val_top1"],
        result["holdout_class"],
        result["update_examples"],
        result["holdout_top1_before"],
        result["holdout_top1_after"],
        result["others_top1_before"],
        result["others_top1_after"],
    )
    if result["others_drop_points"] is not None and result["others_drop_points"] > MAX_OTHERS_DROP:
        job.warnings.append(
            f"{entry['name']}: learning '{result['holdout_class']}' on device costs the other classes "
            f"{result['others_drop_points']:.2f} points of top-1 (> {MAX_OTHERS_DROP})"
        )
