"""Accuracies with their 95% Wilson score interval: a 0.1-point change on 200 images is not read as real."""

from __future__ import annotations

from scipy.stats import binomtest


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (scipy's): stays inside [0, 1], sensible at 0% or 100%."""
    interval = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(interval.low), float(interval.high)


def accuracy_text(rate: float | None, n: int | None) -> str:
    """'91.5% (95% CI 87.2–94.4%, 153 images)' for a rate measured on n images; 'n/a' when unmeasured."""
    if rate is None or not n:
        return "n/a"
    low, high = wilson_interval(round(rate * n), n)
    return f"{100 * rate:.1f}% (95% CI {100 * low:.1f}–{100 * high:.1f}%, {n} images)"
