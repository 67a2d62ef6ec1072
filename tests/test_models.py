"""Every classifier config builds with a head for the dataset; weights load safely or fail with a way out."""

from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from safetensors.torch import save_file

from trainer.models import build_classifier, count_params, headless_copy
from trainer.models.weights import PretrainedWeightsError

TIMM, TORCHVISION = (f"trainer.models.families.{name}Family" for name in ("Timm", "Torchvision"))
CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
MODEL_CONFIGS = sorted(p.stem for p in CONF.glob("*.yaml") if p.stem not in ("timm", "torchvision", "demo"))


def model_cfg(name: str, **overrides):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg.pop("defaults", None)
    return OmegaConf.merge(cfg, overrides)


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_every_model_config_builds_with_new_head(name):
    size = 80 if name == "inception_v3" else 64
    classifier = build_classifier(model_cfg(name, pretrained=False), num_classes=5)
    model = classifier.model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 5)
        embedding = headless_copy(classifier)(torch.randn(2, 3, size, size))
    assert embedding.ndim == 2 and embedding.shape[1] > 5
    assert classifier.head_parameters() and classifier.feature_parameters()
    assert set(classifier.data_config) >= {"mean", "std", "crop_pct", "interpolation"}


def test_any_timm_and_torchvision_model_by_name():
    timm_model = build_classifier(
        OmegaConf.create({"name": "resnet10t", "_target_": TIMM, "pretrained": False}), 3
    )
    tv_model = build_classifier(
        OmegaConf.create({"name": "regnet_x_400mf", "_target_": TORCHVISION, "pretrained": False}), 3
    )
    for classifier in (timm_model, tv_model):
        assert classifier.model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match="not a timm model"):
        build_classifier(OmegaConf.create({"name": "no_such_net", "_target_": TIMM, "pretrained": False}), 3)
    with pytest.raises(ValueError, match="not a torchvision classifier"):
        build_classifier(
            OmegaConf.create({"name": "no_such_net", "_target_": TORCHVISION, "pretrained": False}), 3
        )


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small"])
def test_alpha_scales_the_mobilenets(name):
    small = count_params(build_classifier(model_cfg(name, pretrained=False, alpha=0.35), 10).model)
    big = count_params(build_classifier(model_cfg(name, pretrained=False, alpha=1.4), 10).model)
    assert small < big / 2
    with pytest.raises(ValueError, match="model.alpha"):
        build_classifier(model_cfg(name, pretrained=False, alpha=1.5), 10)


def test_alpha_is_refused_for_other_classifiers():
    with pytest.raises(ValueError, match="only supported by the MobileNets"):
        build_classifier(model_cfg("resnet50", pretrained=False, alpha=0.5), 10)


def test_dropout_setting_reaches_the_classifier():
    classifier = build_classifier(model_cfg("mobilenet_v2", pretrained=False, dropout=0.37), 4)
    assert [m.p for m in classifier.model.modules() if isinstance(m, torch.nn.Dropout)] == [0.37]
    resnet = build_classifier(model_cfg("resnet50", pretrained=False, dropout=0.25), 4)
    assert [m.p for m in resnet.model.modules() if isinstance(m, torch.nn.Dropout)] == [0.25]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_load_in_native_layout(tmp_path, suffix, caplog):
    source = torchvision.models.mobilenet_v2(width_mult=0.5)
    path = tmp_path / f"weights{suffix}"
    state = source.state_dict()
    if suffix == ".pth":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    caplog.set_level("INFO")
    classifier = build_classifier(model_cfg("mobilenet_v2", alpha=0.5, pretrained=str(path)), 3)
    assert classifier.loaded_tensors == len([k for k in state if not k.startswith("classifier")])
    assert "Loaded" in caplog.text and str(path) in caplog.text
    got = classifier.model.state_dict()["features.3.conv.1.0.weight"]
    assert torch.equal(got, state["features.3.conv.1.0.weight"])
    assert classifier.model.classifier[1].out_features == 3


def test_weights_for_another_alpha_are_refused(tmp_path):
    path = tmp_path / "alpha1.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), path)
    with pytest.raises(PretrainedWeightsError, match="do not fit this model"):
        build_classifier(model_cfg("mobilenet_v2", alpha=0.5, pretrained=str(path)), 3)


class _Exploit:
    def __reduce__(self):
        return (Path("/tmp/pwned-by-trainer-test").touch, ())


def test_pickled_code_in_weights_is_not_executed(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"features.0.0.weight": _Exploit()}))
    with pytest.raises(PretrainedWeightsError, match="could not be read as a state_dict"):
        build_classifier(model_cfg("mobilenet_v2", pretrained=str(path)), 3)
    assert not Path("/tmp/pwned-by-trainer-test").exists()


def test_missing_weights_file(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="no such file"):
        build_classifier(model_cfg("mobilenet_v2", pretrained=str(tmp_path / "nope.pth")), 3)


def test_offline_download_failure_names_both_ways_out(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(PretrainedWeightsError) as err:
        build_classifier(model_cfg("mobilenet_v2", pretrained=True), 3)
    message = str(err.value)
    assert "mobilenet_v2" in message and "model.pretrained=false" in message and "/path/to/weights" in message


def test_no_published_weights_for_other_alphas():
    with pytest.raises(PretrainedWeightsError, match=r"alpha=0.75.*model.pretrained=false"):
        build_classifier(model_cfg("mobilenet_v2", alpha=0.75, pretrained=True), 3)
    with pytest.raises(ValueError, match="No published weights"):
        build_classifier(model_cfg("mobilenet_v1", alpha=0.5, pretrained=True), 3)
