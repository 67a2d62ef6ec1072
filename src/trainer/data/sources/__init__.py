"""Dataset sources: each module registers a builder `cfg.dataset -> DatasetIndex` with `register_source`."""

from trainer.data.sources import camera_scene, demo, folder, imagenette, stanford_dogs, tiny_imagenet

__all__ = ["camera_scene", "demo", "folder", "imagenette", "stanford_dogs", "tiny_imagenet"]
