"""Temperature scaling, calibration error, the coverage table and the "not sure" thresholds, and folding the
temperature into a model's head (every exported format then carries it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from trainer.export.handoff.not_sure import not_sure_section
from trainer.reports.run_report.calibration import (
    TEMPERATURE_RANGE,
    calibrate,
    coverage,
    fit_temperature,
    fold_temperature,
    precision_threshold,
    probabilities,
)


def overconfident(n: int = 2000, classes: int = 5, true_t: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """Logits drawn calibrated at temperature 1, then sharpened by `true_t`: T = true_t undoes it."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(n, classes)) * 1.5
    labels = np.array([rng.choice(classes, p=p) for p in probabilities(logits)])
    return (logits * true_t).astype(np.float32), labels


def test_fitted_temperature_undoes_overconfidence_and_lowers_ece() -> None:
    logits, labels = overconfident()
    result = calibrate(logits, labels)
    assert result["temperature"] == pytest.approx(2.5, rel=0.1)
    assert result["after"]["ece"] < result["before"]["ece"] / 3
    assert sum(b["count"] for b in result["after"]["bins"]) == len(labels)
    assert result["after"]["ece"] < 0.03


def test_temperature_never_changes_the_winner() -> None:
    logits, labels = overconfident(300)
    t = fit_temperature(logits, labels)
    assert (probabilities(logits, t).argmax(1) == logits.argmax(1)).all()
    assert fit_temperature(np.zeros((0, 3), np.float32), np.zeros(0, np.int64)) == 1.0


def test_a_model_at_chance_gets_a_bounded_temperature() -> None:
    """Labels unrelated to the logits: the NLL optimum is T -> infinity (flat scores), which would tie the
    fp16 and int8 copies; the fit stops at the top of TEMPERATURE_RANGE."""
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(600, 6)).astype(np.float32), rng.integers(0, 6, 600)
    assert fit_temperature(logits, labels) == TEMPERATURE_RANGE[1]


def test_coverage_and_precision_thresholds() -> None:
    # confidences 0.9 (right), 0.8 (right), 0.7 (wrong), 0.6 (right)
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 0, 0, 0])
    rows = {r["threshold"]: r for r in coverage(probs, labels)}
    assert rows[0.0] == {"threshold": 0.0, "answered": 1.0, "accuracy": 0.75}
    assert rows[0.8] == {"threshold": 0.8, "answered": 0.5, "accuracy": 1.0}
    assert rows[0.95]["answered"] == 0.0 and rows[0.95]["accuracy"] is None
    assert precision_threshold(probs, labels, 0.95) == pytest.approx(0.8)
    assert precision_threshold(probs, labels, 0.7) == pytest.approx(0.6)  # 3 of 4 right at t = 0.6
    assert precision_threshold(probs[2:3], labels[2:3], 0.95) is None


@pytest.mark.parametrize(
    "head",
    [
        nn.Sequential(nn.Dropout(0.2), nn.Linear(8, 4)),  # torchvision MobileNet / timm
        nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()),  # SqueezeNet
    ],
)
def test_folding_divides_the_outputs_by_the_temperature(head: nn.Module) -> None:
    body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    if isinstance(head[0], nn.Dropout):
        body.append(nn.AdaptiveAvgPool2d(1)).append(nn.Flatten())
    model = nn.Sequential(body, head).eval()
    x = torch.randn(5, 3, 16, 16)
    before = model(x).detach()
    assert fold_temperature(model, "1", 1.7, torch.randn(2, 3, 16, 16))
    torch.testing.assert_close(model(x).detach(), before / 1.7, rtol=1e-5, atol=1e-5)
    assert torch.equal(model(x).argmax(1), before.argmax(1))


def test_a_head_that_cannot_carry_it_is_left_as_it_was() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(12, 4), nn.Tanh())).eval()
    x = torch.randn(3, 3, 2, 2)
    before = model(x).detach()
    assert not fold_temperature(model, "1", 2.0, x)
    torch.testing.assert_close(model(x).detach(), before)


def test_card_section_states_the_rule_and_where_the_temperature_lives() -> None:
    meta = {"temperature": 1.8, "temperature_in_model": True, "not_sure_below_95": 0.81234}
    text = "\n".join(not_sure_section(meta))
    assert "fitted on the val split" in text and "folded into every exported model" in text
    assert '>= 0.812 ? top.label : "not sure"' in text and "top.confidence >= 0.812f" in text
    assert not_sure_section({}) == []
