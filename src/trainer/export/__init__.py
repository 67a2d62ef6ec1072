"""Export a trained classifier for apps: TorchScript, ONNX (fp32 + int8) and Core ML, each verified on the
val images and listed in manifest.json, with labels, a model card and Swift code beside them."""

from trainer.export.pipeline import export_all

__all__ = ["export_all"]
