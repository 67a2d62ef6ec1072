"""Fine-tune an ImageNet backbone on a dataset and export it: python train.py [overrides]. See README.md."""

from trainer.cli import train

if __name__ == "__main__":
    train()
