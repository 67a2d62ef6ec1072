"""Load an .mlpackage's ML Program and run it op by op with torch: a reference Core ML runtime for Linux.

coremltools parses the program (`milproto.load`) and materializes `constexpr_*` weights (int8, palettized,
sparse, blockwise) with its own decompression code, so compressed weights are what Core ML would load. The
executor then runs the ops in program order on a batch, each with its torch kernel from `ops.KERNELS`, and
applies Core ML's fp16 semantics: an op whose output is fp16 has its result rounded to fp16 (kernels compute
in fp32). Unknown ops or inputs fail at load, naming the op; every output shape is checked against the one
the program declares, so a kernel that disagrees with MIL's shape rules fails loudly too.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.export.converters.coreml.executor.ops import KERNELS, Kernel

WEIGHTS_DIR = "Data/com.apple.CoreML/weights"
IMAGE_LAYOUTS = ("RGB", "BGR")


@dataclass(frozen=True)
class _Ref:
    """A value computed at run time, by the name of the MIL variable holding it."""

    name: str


@dataclass
class _Step:
    op_type: str
    name: str
    kernel: Kernel
    args: dict[str, Any]  # constants as values, run-time inputs as _Ref (or lists holding _Ref)
    outputs: list[tuple[str, bool, tuple[int, ...] | None]]  # name, rounds to fp16, declared shape
    frees: list[str]  # values no later step reads


def _dtype(var: Any) -> str:
    from coremltools.converters.mil.mil import types

    return types.builtin_to_string(var.dtype)


def _constant(value: Any) -> Any:
    """A MIL constant as the kernels take it: float tensors for float arrays, Python values otherwise."""
    if isinstance(value, str | list | tuple):
        return value
    array = np.asarray(value)
    if array.dtype.kind == "f":
        return float(array) if array.ndim == 0 else torch.from_numpy(array.astype(np.float32))
    if array.dtype.kind in "iub":
        return array.item() if array.ndim == 0 else tuple(array.reshape(-1).tolist())
    raise ValueError(f"unsupported constant of dtype {array.dtype}")


def _shape(var: Any) -> tuple[int, ...] | None:
    shape = getattr(var, "shape", None)
    if shape is None or not all(isinstance(d, int | np.integer) for d in shape):
        return None
    return tuple(int(d) for d in shape)


def load_program(package: Path) -> tuple[Any, Any]:
    """The package's spec and its parsed MIL program (coremltools' own loader, quiet about its passes)."""
    import coremltools as ct

    spec = ct.models.utils.load_spec(str(package))
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"{package}: not an ML Program (model type '{spec.WhichOneof('Type')}')")
    return spec, parse_program(spec, package / WEIGHTS_DIR)


def parse_program(spec: Any, weights_dir: Path | str) -> Any:
    """The MIL program of an ML Program spec whose weights lie in `weights_dir` (also an unsaved MLModel's
    `weights_dir`)."""
    from coremltools.converters.mil.frontend.milproto.load import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            return load(spec, spec.specificationVersion, file_weights_dir=str(weights_dir))
        finally:
            logging.disable(previous)


class CoreMLExecutor:
    """Runs a Core ML ML Program (.mlpackage) on CPU with torch, batched along axis 0.

    `run` takes raw RGB pixels (N, 3, H, W) in 0..255 for an image input (the ImageType's scale/bias are ops
    of the program), or the tensor itself for a multiarray input, and returns each output by name: a
    classifier's label list and its probabilities as an (N, K) array in `classes` order, else arrays.
    """

    def __init__(self, package: Path | str):
        self.package = Path(package)
        spec, program = load_program(self.package)
        main = program.functions["main"]
        if len(main.inputs) != 1:
            raise ValueError(f"{self.package}: the executor runs single-input models, not {len(main.inputs)}")
        self.input_name, input_var = next(iter(main.inputs.items()))
        self.input_shape = _shape(input_var)
        if self.input_shape is None:
            raise ValueError(f"{self.package}: input '{self.input_name}' has a flexible shape")
        self.layout = self._image_layout(spec)
        self.output_names = [o.name for o in spec.description.output]
        self.classes: list[str] | None = None  # a classifier's labels, in its probabilities' column order
        self.probabilities_output: str | None = None  # and the name of that output
        self._steps = self._plan(main)

    def _image_layout(self, spec: Any) -> str | None:
        """'RGB' / 'BGR' for an image input, None for a multiarray input."""
        from coremltools.proto import FeatureTypes_pb2

        feature = spec.description.input[0].type
        if feature.WhichOneof("Type") != "imageType":
            return None
        layout = FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(feature.imageType.colorSpace)
        if layout not in IMAGE_LAYOUTS:
            raise ValueError(f"{self.package}: image color space {layout} is not supported ({IMAGE_LAYOUTS})")
        return layout

    def _plan(self, main: Any) -> list[_Step]:
        materialized: dict[str, Any] = {}
        steps: list[_Step] = []
        for op in main.operations:
            if op.op_type == "const":
                continue
            if op.op_type.startswith("constexpr_"):
                self._materialize(op, materialized)
                continue
            if op.op_type not in KERNELS:
                raise ValueError(
                    f"{self.package}: op '{op.op_type}' ({op.name}) is not supported by the Core ML "
                    f"executor; supported: {sorted(KERNELS)}"
                )
            steps.append(self._step(op, materialized))
        last_use: dict[str, int] = {}
        for index, step in enumerate(steps):
            for ref in (r for value in step.args.values() for r in _refs(value)):
                last_use[ref.name] = index
        outputs = {var.name for var in main.outputs}
        for name, index in last_use.items():
            if name not in outputs and name != self.input_name:
                steps[index].frees.append(name)
        return steps

    def _materialize(self, op: Any, materialized: dict[str, Any]) -> None:
        """Decompress a constexpr op's weights with coremltools' own code, stored in the op's output dtype."""
        values = op.materialized_val_inference()
        values = values if isinstance(values, tuple) else (values,)
        for var, value in zip(op.outputs, values, strict=True):
            dtype = np.float16 if _dtype(var) == "fp16" else None
            materialized[var.name] = np.asarray(value, dtype=dtype)

    def _step(self, op: Any, materialized: dict[str, Any]) -> _Step:
        kernel = KERNELS[op.op_type]
        accepted = inspect.signature(kernel).parameters
        args: dict[str, Any] = {}
        for name, binding in op.inputs.items():
            if name not in accepted:
                raise ValueError(
                    f"{self.package}: input '{name}' of op '{op.op_type}' ({op.name}) is not supported"
                )
            args[name] = (
                [self._argument(v, materialized) for v in binding]
                if isinstance(binding, tuple | list)
                else self._argument(binding, materialized)
            )
        if op.op_type == "reshape":
            args["shape"] = self._batched_shape(op)
        self._check_batch_axis(op, args)
        if op.op_type == "classify":
            self.classes = [str(c) for c in args["classes"]]
            self.probabilities_output = op.outputs[1].name
        outputs = [(var.name, _dtype(var) == "fp16", _shape(var)) for var in op.outputs]
        return _Step(op.op_type, op.name, kernel, args, outputs, [])

    @staticmethod
    def _argument(var: Any, materialized: dict[str, Any]) -> Any:
        if var.name in materialized:
            return _constant(materialized[var.name])
        if var.op is not None and var.op.op_type == "const":
            return _constant(var.val)
        return _Ref(var.name)

    def _batched_shape(self, op: Any) -> tuple[int, ...]:
        """A reshape's target with its batch axis left to the run (-1): only reshapes that keep axis 0."""
        source, target = _shape(op.inputs["x"]), _shape(op.outputs[0])
        batch = self.input_shape[0]
        if source is None or target is None or source[0] != batch or target[0] != batch:
            raise ValueError(
                f"{self.package}: reshape {op.name} maps {source} to {target}; the executor batches along "
                "axis 0 and runs only reshapes that keep it"
            )
        return (-1, *target[1:])

    def _check_batch_axis(self, op: Any, args: dict[str, Any]) -> None:
        """Refuse ops that reduce or join along axis 0, which batching would change."""
        x = op.inputs.get("x")
        rank = len(x.shape) if x is not None and x.shape is not None else None
        for key in ("axis", "axes"):
            value = args.get(key)
            if value is None or isinstance(value, _Ref) or rank is None:
                continue
            axes = value if isinstance(value, tuple) else (value,)
            if any(a % rank == 0 for a in axes):
                raise ValueError(f"{self.package}: {op.op_type} {op.name} works along the batch axis 0")

    def run(self, inputs: np.ndarray | torch.Tensor) -> dict[str, Any]:
        """Every output of the program for a batch (see the class docstring for what `inputs` is)."""
        x = torch.as_tensor(np.asarray(inputs, dtype=np.float32))
        if tuple(x.shape[1:]) != self.input_shape[1:]:
            expected = ", ".join(map(str, self.input_shape[1:]))
            raise ValueError(f"{self.package}: input must be (N, {expected}), got {tuple(x.shape)}")
        if self.layout == "BGR":
            x = x.flip(1)
        values: dict[str, Any] = {self.input_name: x}
        with torch.inference_mode():
            for step in self._steps:
                result = step.kernel(**{k: _resolve(v, values) for k, v in step.args.items()})
                results = result if isinstance(result, tuple) else (result,)
                for output, value in zip(step.outputs, results, strict=True):
                    values[output[0]] = self._checked(step, output, value)
                for name in step.frees:
                    del values[name]
        return {name: _numpy(values[name]) for name in self.output_names}

    def _checked(self, step: _Step, output: tuple[str, bool, tuple[int, ...] | None], value: Any) -> Any:
        """An op's result with its shape checked against the program's and fp16 outputs rounded to fp16."""
        _, fp16, declared = output
        if not isinstance(value, torch.Tensor):
            return value
        if declared and tuple(value.shape[1:]) != declared[1:]:
            raise RuntimeError(
                f"{self.package}: {step.op_type} {step.name} gave shape {tuple(value.shape)}, "
                f"the program declares {declared}"
            )
        return value.to(torch.float16).to(torch.float32) if fp16 else value


def _refs(value: Any) -> list[_Ref]:
    if isinstance(value, _Ref):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, _Ref)]
    return []


def _resolve(value: Any, values: dict[str, Any]) -> Any:
    if isinstance(value, _Ref):
        return values[value.name]
    if isinstance(value, list):
        return [_resolve(v, values) for v in value]
    return value


def _numpy(value: Any) -> Any:
    return value.float().numpy() if isinstance(value, torch.Tensor) else value
