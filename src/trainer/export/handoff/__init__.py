"""What app developers receive beside the models: file names (names.py), the model card, Swift and Kotlin
code, and the confidence intervals the card quotes."""
