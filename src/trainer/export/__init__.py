"""Export a trained classifier for apps: every format of the table in formats.py (TorchScript, ONNX, Core
ML, LiteRT, ExecuTorch), each verified on the val images and listed in manifest.json, with labels, a model
card and Swift/Kotlin code beside them; pipeline.export_all runs it. Nothing is imported here, so reading
the export settings (trainer.cli registers their schema) loads no converter."""
