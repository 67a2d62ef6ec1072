"""A reference executor for Core ML ML Programs on Linux: run an .mlpackage op by op with torch."""

from trainer.export.converters.coreml.executor.program import CoreMLExecutor

__all__ = ["CoreMLExecutor"]
