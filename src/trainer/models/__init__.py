"""Classifiers: building from config (model families), pretrained weights, complexity counts."""

from trainer.models.complexity import count_macs, count_params
from trainer.models.registry import Classifier, build_classifier, headless_copy, model_family

__all__ = ["Classifier", "build_classifier", "count_macs", "count_params", "headless_copy", "model_family"]
