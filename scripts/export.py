"""Export a trained checkpoint (no retraining): python scripts/export.py ckpt=.../checkpoints/best.ckpt

export.formats=[...] picks rows of the format table (src/trainer/export/formats.py); an unknown name stops the
command before the checkpoint is loaded, with the table in the message.
"""

from trainer.cli import export

if __name__ == "__main__":
    export()
