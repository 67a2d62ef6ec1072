"""One module or package per row of the format table (formats.py): each converts the model to its
artifacts, verifies them on the val images and loads an artifact as a predictor."""
