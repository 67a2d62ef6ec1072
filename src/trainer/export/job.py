"""ExportJob: what every format's export step gets (the model, its reference outputs on the val images, where
to write) and what it hands back for manifest.json (artifacts with their figures, skips, warnings, errors)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.data.data_config import DataConfig
from trainer.export.manifest import artifact_entry, record_errors
from trainer.export.settings import ExportSettings
from trainer.export.verify import (
    Predict,
    agreement_gate,
    changed_answers,
    different_answers,
    drop_gate,
    evaluate,
    fp32_problems,
    lost_and_gained,
    run_batches,
    top1,
    torch_predictor,
)

log = logging.getLogger(__name__)

MAX_INT8_TOP1_DROP = 1.0  # points of val top-1 an int8 artifact may lose against fp32 before a warning


@dataclass
class ExportJob:
    """State of one export. Format modules add artifacts through `add` and `verify`, and report through
    `guard` (a failing converter), `fail` (a failed check) and `skip` (not produced, with the reason)."""

    model: nn.Module  # eval mode, CPU: normalized (N, 3, S, S) float input to (N, classes) logits
    classes: list[str]
    data_config: DataConfig  # the run's eval preprocessing
    out_dir: Path
    settings: ExportSettings
    inputs: np.ndarray  # the preprocessed val images
    labels: np.ndarray
    reference: np.ndarray  # PyTorch's logits on `inputs`
    example: torch.Tensor  # one input for tracing
    model_metadata: dict[str, Any]  # what goes into the models' own metadata
    read_calibration: Callable[[], np.ndarray]
    threads: int
    # `count` preprocessed training images drawn across classes; held_out: none of the calibration draw
    read_training: Callable[[int, bool], np.ndarray] = lambda count, held_out: np.zeros(
        (0, 3, 1, 1), np.float32
    )
    val_paths: list[str] = field(default_factory=list)  # the image of each row of `inputs`
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def image_size(self) -> int:
        return self.data_config.size

    @property
    def mean(self) -> tuple[float, ...]:
        return self.data_config.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.data_config.std

    @cached_property
    def calibration(self) -> np.ndarray:
        """Preprocessed training images for int8 calibration, read on first use."""
        return self.read_calibration()

    @cached_property
    def holdout(self) -> tuple[np.ndarray, np.ndarray]:
        """Training images outside the calibration draw (export.int8.holdout_images) and PyTorch's logits on
        them: what export.int8.keep_float=auto is steered by, so that val stays the yardstick. Where every
        training image calibrates (a few-shot set), the calibration images themselves (`holdout_in_sample`):
        an optimistic view, but enough to see a copy collapse (brain_mri_fewshot's 40 photos: the all-int8
        ONNX copy's KL 0.87 there, 0.0027 with the classifier float; val agreement 35.5% -> 96.0%)."""
        count = self.settings.int8.holdout_images
        images = self.read_training(count, True)
        if not len(images):
            images = self.calibration[:count]
        return images, run_batches(torch_predictor(self.model), images)

    @property
    def holdout_in_sample(self) -> bool:
        """Whether `holdout` fell back to the calibration images (no other training images)."""
        return bool(len(self.holdout[0])) and np.shares_memory(self.holdout[0], self.calibration)

    @cached_property
    def ranking(self) -> list[str]:
        """The weighted layers, most int8-sensitive first (quantize/sensitivity.py), shared by the formats."""
        from trainer.export.quantize.sensitivity import RANKING_IMAGES, rank_layers

        started = time.perf_counter()
        images, logits = self.holdout
        scores = rank_layers(self.model, self.calibration, images[:RANKING_IMAGES], logits[:RANKING_IMAGES])
        log.info(
            "export: ranked %d layers by int8 sensitivity in %.1f s",
            len(scores),
            time.perf_counter() - started,
        )
        return [score.name for score in scores]

    def guard(self, what: str) -> AbstractContextManager[None]:
        """Record an exception from the block as an error of `what` instead of aborting the export."""
        return record_errors(self.errors, "artifact", what)

    def fail(self, what: str, problems: list[str]) -> None:
        for problem in problems:
            log.error("export: %s", problem)
            self.errors.append({"artifact": what, "error": problem})

    def skip(self, name: str, reason: str) -> None:
        log.info("export: skipping %s: %s", name, reason)
        self.skipped.append({"name": name, "reason": reason})

    def add(self, path: Path, *, format: str, precision: str, kind: str = "classifier", **extra: Any) -> dict:
        entry = artifact_entry(path, self.out_dir, format=format, precision=precision, kind=kind)
        entry.update(extra)
        self.artifacts.append(entry)
        return entry

    def verify(
        self,
        entry: dict,
        predict: Predict,
        reference: np.ndarray,
        *,
        classifier: bool = True,
        fp32: bool = False,
    ) -> np.ndarray:
        """Run the artifact on the val images, store its figures in `entry`; fp32 ones must match PyTorch."""
        outputs, stats = evaluate(
            predict,
            self.inputs,
            reference,
            self.labels if classifier else None,
            runs=self.settings.latency.runs,
            warmup=self.settings.latency.warmup,
            threads=self.threads,
        )
        if fp32:
            self.fail(entry["name"], fp32_problems(entry["name"], stats, reference))
        entry.update(stats)
        return outputs

    def copy_of_fp32(self, name: str, wanted: bool, fp32_made: bool, fmt: str) -> bool:
        """Whether to make `name`, a smaller copy of its format's fp32 artifact: when wanted and the fp32 one
        was made (a wanted copy of a failed fp32 export is listed as skipped)."""
        if wanted and not fp32_made:
            self.skip(name, f"the {fmt} fp32 export failed")
        return wanted and fp32_made

    def compare_with_fp32(self, what: str, entry: dict, fp32: np.ndarray, outputs: np.ndarray) -> None:
        """Agreement with, and top-1 drop against, the outputs `fp32` of the fp32 artifact this copies;
        a drop above MAX_INT8_TOP1_DROP points that is more than chance (verify.lost_and_gained) is a
        warning."""
        fp32_top1, own_top1 = top1(fp32, self.labels), top1(outputs, self.labels)
        if fp32_top1 is None or own_top1 is None:
            return
        entry["top1_agreement_vs_fp32"] = float((fp32.argmax(1) == outputs.argmax(1)).mean())
        entry["top1_drop_vs_fp32"] = round(100.0 * (fp32_top1 - own_top1), 3)
        entry.update(lost_and_gained(fp32, outputs, self.labels))
        entry["answers_changed_vs_fp32"] = changed_answers(fp32, outputs, self.labels, self.val_paths)
        drop, p_value = entry["top1_drop_vs_fp32"], entry["top1_drop_p_value"]
        entry["gate"] = drop_gate("top1_drop_vs_fp32", drop, MAX_INT8_TOP1_DROP, p_value, "warning")
        if not entry["gate"]["passed"]:
            self.warnings.append(
                f"{what} loses {entry['top1_drop_vs_fp32']:.2f} points of val top-1 against fp32 "
                f"(> {MAX_INT8_TOP1_DROP}; sign-test p {entry['top1_drop_p_value']})"
            )
        self.check_agreement(what, entry)
        self.check_latency(what, entry)

    def check_latency(self, what: str, entry: dict) -> None:
        """An int8 copy's latency against its format's fp32 file, both measured in this export
        (`latency_vs_fp32`). A mixed-precision copy that is not faster is a warning naming the fix: in ONNX a
        layer kept float makes the one in front write float too (trashnet, 128 px: all-int8 0.73x fp32,
        eight layers float 1.3-1.6x). An all-int8 copy of a tiny model can be slower too (quantize and
        dequantize cost more than they save): recorded, not warned, as there is nothing to change."""
        if entry.get("precision") != "int8" or not entry.get("latency_ms"):
            return  # fp16 copies are for size: on a CPU they run as fp32
        same = (entry.get("format"), entry.get("kind"), "fp32")
        key = ("format", "kind", "precision")
        fp32 = next((a for a in self.artifacts if tuple(a.get(k) for k in key) == same), None)
        if not (fp32 and fp32.get("latency_ms")):
            return
        entry["latency_vs_fp32"] = round(entry["latency_ms"] / fp32["latency_ms"], 2)
        kept = entry.get("float_layers") or []
        if kept and entry["latency_vs_fp32"] >= 1.0:
            self.warnings.append(
                f"{what} is not faster than its fp32 file: {entry['latency_vs_fp32']}x its latency; "
                f"export.int8.keep_float=auto kept {len(kept)} layer{'s' * (len(kept) != 1)} float "
                "(export.int8.keep_float=none: the fastest copy)"
            )

    def check_agreement(self, what: str, entry: dict) -> None:
        """Store a quantized copy's agreement gate (verify.agreement_gate) in `entry`; a failed one is
        flagged in the warnings, in the words the summary and the card use."""
        check = agreement_gate(entry, self.settings.min_agreement)
        if check is None:
            return
        entry["agreement_gate"] = check
        if not check["passed"]:
            self.warnings.append(
                f"{what} failed its agreement gate ({check['rule']}): {different_answers(check)}"
            )
