"""The model card's "not sure" section: the temperature fitted on val, and the confidence an app should
require before it shows an answer, with the one line of Swift and Kotlin that applies it."""

from __future__ import annotations

from typing import Any


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def not_sure_section(meta: dict[str, Any]) -> list[str]:
    """Markdown lines from the provenance the run recorded (empty for exports without calibration)."""
    if "temperature" not in meta:
        return []
    temperature = meta["temperature"]
    if meta.get("temperature_in_model"):
        where = (
            f"It is folded into every exported model (the last layer's weight and bias divided by "
            f"{temperature:.3f}), so their probabilities are already calibrated; the winning class is "
            "unchanged."
        )
    else:
        where = (
            "This head could not carry it: the app divides the logits by it before the softmax "
            "(Core ML's classifier probabilities are then not calibrated)."
        )
    t95, t99 = meta.get("not_sure_below_95"), meta.get("not_sure_below_99")
    lines = [
        '## Confidence and the "not sure" rule',
        "",
        f"Temperature T = {temperature:.3f}, fitted on the val split (one scalar, LBFGS on the negative "
        f"log-likelihood of softmax(logits / T)). {where} Photos of things outside the classes still get an "
        "answer: require a confidence before showing it.",
        "",
    ]
    rows = [(p, t) for p, t in (("95%", t95), ("99%", t99)) if t is not None]
    lines += [
        f"- for {p} precision on the val photos: answer only when the top probability is >= {t:.3f}"
        for p, t in rows
    ]
    if not rows:
        lines.append("- no threshold reaches 95% precision on the val photos: show the top 3 instead")
    threshold = (t95 if t95 is not None else t99) or 0.5
    lines += [
        "",
        f"Swift (`top` = the first prediction of `Classifier.classify`): "
        f'`let answer = top.confidence >= {threshold:.3f} ? top.label : "not sure"`',
        "",
        f"Kotlin (`top` = the first prediction of `Classifier.classify`): "
        f'`val answer = if (top.confidence >= {threshold:.3f}f) top.label else "not sure"`',
        "",
    ]
    return lines
