"""Print the top-k classes of photos with an exported model.

    python scripts/predict.py --artifact outputs/<run>/export/model.onnx photo1.jpg photo2.png [--top-k 3]

Same as the `trainer-predict` command; reads preprocessing and class names from the manifest.json beside the
artifact.
"""

import sys

from trainer.export.predict import main

if __name__ == "__main__":
    sys.exit(main())
