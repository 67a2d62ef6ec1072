"""trainer: fine-tune ImageNet backbones on your photos and ship them to phones."""

__version__ = "0.1.0"
