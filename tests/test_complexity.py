"""count_macs / count_params on a model small enough to count by hand."""

import pytest
import torch
import torch.nn as nn

from trainer.models.complexity import count_macs, count_params

SIZE = 8


def tiny_model() -> nn.Module:
    """conv 3->4 (3x3, same padding) + BN + ReLU + linear 4*8*8 -> 10."""
    return nn.Sequential(
        nn.Conv2d(3, 4, kernel_size=3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * SIZE * SIZE, 10),
    )


def test_macs_equal_hand_count() -> None:
    conv = SIZE * SIZE * 4 * (3 * 3 * 3)  # one 27-term dot product per output element
    linear = (4 * SIZE * SIZE) * 10  # BN, ReLU and bias adds are not mult-adds
    assert count_macs(tiny_model(), SIZE) == conv + linear == 9472


def test_params_equal_hand_count() -> None:
    conv, bn, linear = 3 * 4 * 9 + 4, 2 * 4, 4 * SIZE * SIZE * 10 + 10
    assert count_params(tiny_model()) == conv + bn + linear == 2690


@pytest.mark.parametrize("train", [True, False])
def test_mode_and_state_unchanged(train: bool) -> None:
    model = tiny_model().train(train)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model, SIZE)
    assert all(m.training == train for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched


def test_device_unchanged_on_cpu() -> None:
    model = tiny_model()
    count_macs(model, SIZE)
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_unchanged_on_cuda() -> None:
    model = tiny_model().cuda()
    assert count_macs(model, SIZE) == 9472
    assert all(p.device.type == "cuda" for p in model.parameters())
