"""TorchScript export: a traced eval-mode model, and optionally the mobile lite-interpreter file.

The `torchscript` row of the format table (formats.py); both files take normalized NCHW input, output logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.export.converters.tracing import jit_without_deprecation, trace
from trainer.export.formats import FORMATS
from trainer.export.job import ExportJob
from trainer.export.metadata import METADATA_NAME, as_json
from trainer.export.verify import Predict, torch_predictor
from trainer.utils.files import atomic_output

FORMAT = FORMATS["torchscript"]


def export_torchscript(
    model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, Any] | None = None
) -> None:
    """Write the traced model to `path`, with `metadata` as its extra file METADATA_NAME."""
    traced = trace(model, example)
    with atomic_output(path) as tmp, jit_without_deprecation():
        torch.jit.save(traced, str(tmp), _extra_files=_extra_files(metadata))


def _extra_files(metadata: dict[str, Any] | None) -> dict[str, str]:
    return {} if metadata is None else {METADATA_NAME: as_json(metadata)}


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata a .pt file carries, read by TorchScript's own loader."""
    extra = {METADATA_NAME: ""}
    with jit_without_deprecation():
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[METADATA_NAME])


def lite_unavailable_reason() -> str | None:
    """Why optimize_for_mobile cannot run in this torch build (None when it can)."""
    if not torch._C._is_xnnpack_enabled():
        return f"optimize_for_mobile needs XNNPACK, which this torch build ({torch.__version__}) lacks"
    return None


def export_lite(torchscript_path: Path, path: Path, metadata: dict[str, Any] | None = None) -> None:
    """Write the mobile-optimized lite-interpreter version of a saved TorchScript model, with `metadata`."""
    from torch.utils.mobile_optimizer import optimize_for_mobile

    optimized = optimize_for_mobile(load_torchscript(torchscript_path))
    with atomic_output(path) as tmp:
        optimized._save_for_lite_interpreter(str(tmp), _extra_files=_extra_files(metadata))


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """Load a saved TorchScript model on CPU in eval mode."""
    with jit_without_deprecation():
        return torch.jit.load(str(path), map_location="cpu").eval()


def load_lite(path: Path):
    """Load a lite-interpreter (.ptl) model, as the PyTorch Mobile runtime would."""
    from torch.jit.mobile import _load_for_lite_interpreter

    return _load_for_lite_interpreter(str(path))


def export(job: ExportJob) -> None:
    """model_torchscript.pt, and model_mobile.ptl with torchscript.lite; both must match PyTorch."""
    path = job.out_dir / FORMAT.file("fp32")
    with job.guard("torchscript"):
        export_torchscript(job.model, job.example, path, job.model_metadata)
        entry = job.add(path, format="torchscript", precision="fp32")
        job.verify(entry, torch_predictor(load_torchscript(path)), job.reference, fp32=True)
    if not job.settings.torchscript.lite:
        return
    reason = lite_unavailable_reason() or (None if path.exists() else "the TorchScript export failed")
    if reason:
        job.skip("torchscript_lite", reason)
        return
    with job.guard("torchscript_lite"):
        lite = job.out_dir / FORMAT.file("lite")
        export_lite(path, lite, job.model_metadata)
        entry = job.add(lite, format="torchscript_lite", precision="fp32")
        job.verify(entry, torch_predictor(load_lite(lite)), job.reference, fp32=True)


def load(path: Path, manifest: dict[str, Any]) -> Predict:
    """A predictor for a .pt (TorchScript) or .ptl (lite interpreter) file."""
    return torch_predictor(load_lite(path) if path.suffix.lower() == ".ptl" else load_torchscript(path))
