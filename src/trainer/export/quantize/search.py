"""export.int8.keep_float=auto: mixed precision, the fewest most int8-sensitive layers kept in float.

The all-int8 copy is built first; when its KL divergence from fp32 on held-out training images is above
export.int8.max_kl, the top 1, 2, 4, ... layers of the sensitivity ranking (sensitivity.py) stay float until
it is at or below, or export.int8.max_float_layers is reached (then the lowest KL tried wins). KL, not
agreement, steers it: the fine-tuned model is so sure of its own training images that an int8 copy agreeing
on 93.8% of val photos agreed on 100% of 128 held-out training photos, while the KL rose with val's KL (0.0135
held out vs 0.0178 val for that copy, 0.0071 vs 0.0096 for a better one; docs/quantization.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from torch import nn

from trainer.export.job import ExportJob
from trainer.export.quantize.sensitivity import WEIGHTED, kl_divergence
from trainer.export.verify import Predict, run_batches


def _steps(most: int) -> list[int]:
    """0, 1, 2, 4, ... up to and including `most`."""
    steps, k = [0], 1
    while k < most:
        steps.append(k)
        k *= 2
    return steps + [most]


def float_weight_share(model: nn.Module, layers: list[str]) -> float:
    """Share of the weighted layers' parameters that `layers` hold: what staying float costs in size
    (a float weight takes 4 bytes where int8 takes 1)."""
    sizes = {name: m.weight.numel() for name, m in model.named_modules() if isinstance(m, WEIGHTED)}
    return sum(sizes[name] for name in layers) / max(sum(sizes.values()), 1)


def keep_float_search(
    job: ExportJob,
    build: Callable[[list[str]], Predict],
    batch_size: int = 16,
    keepable: Callable[[str], bool] | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """Build the int8 copy (`build(float_layers)` writes it and returns its predictor) with the layers kept
    float that export.int8.keep_float asks for; returns them and the record for the manifest entry.
    `keepable`: which layers of the ranking's top max_float_layers the format can keep float (default:
    all of the ranking)."""
    settings = job.settings.int8

    def ranked(count: int) -> list[str]:
        if keepable is None:
            return job.ranking[:count]
        return [layer for layer in job.ranking[: settings.max_float_layers] if keepable(layer)][:count]

    if settings.keep_float == "none":
        build([])
        return [], {"keep_float": "none"}
    started = time.perf_counter()
    images, reference = job.holdout
    if not len(images):
        build([])
        return [], {"keep_float": "auto", "skipped": "no training images"}
    trail: list[dict[str, Any]] = []
    chosen: list[str] = []
    for count in _steps(settings.max_float_layers):
        layers = ranked(count) if count else []
        if trail and len(layers) == trail[-1]["float_layers"]:
            break  # no further layer this format can keep float
        kl = kl_divergence(reference, run_batches(build(layers), images, batch_size))
        trail.append({"float_layers": len(layers), "holdout_kl": round(kl, 6)})
        chosen = layers
        if kl <= settings.max_kl or len(layers) < count:
            break
    source = "the calibration images (no others)" if job.holdout_in_sample else "held-out training images"
    best = min(range(len(trail)), key=lambda i: (trail[i]["holdout_kl"], i))
    if trail[best]["float_layers"] != len(chosen):
        chosen = ranked(trail[best]["float_layers"])
        build(chosen)
    record = {
        "keep_float": "auto",
        "max_kl": settings.max_kl,
        "holdout_images": len(images),
        "holdout": source,
        "holdout_kl": trail[best]["holdout_kl"],
        "tried": trail,
        "float_weight_share": round(float_weight_share(job.model, chosen), 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return chosen, record
