"""Backbones: building from config, pretrained weights, complexity counts."""

from trainer.models.complexity import count_macs, count_params
from trainer.models.registry import Backbone, build_backbone, headless_copy

__all__ = ["Backbone", "build_backbone", "count_macs", "count_params", "headless_copy"]
