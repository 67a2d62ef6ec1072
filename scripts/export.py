"""Export a trained checkpoint (no retraining): python scripts/export.py ckpt=.../checkpoints/best.ckpt"""

from trainer.cli import export

if __name__ == "__main__":
    export()
